//! Parses the lines git sends a remote helper (gitremote-helpers(7)). Pure: no I/O.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capabilities,
    Option {
        name: String,
        value: String,
    },
    List {
        for_push: bool,
    },
    Fetch {
        oid: String,
        name: String,
    },
    Push {
        src: String,
        dst: String,
        force: bool,
    },
    /// Ends a batch, or the session when no batch is open.
    Blank,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command '{0}'")]
    Unknown(String),
    #[error("malformed '{command}' line: '{line}'")]
    Malformed { command: &'static str, line: String },
}

pub fn parse_line(line: &str) -> Result<Command, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let malformed = |command| ParseError::Malformed { command, line: line.to_string() };
    if line.is_empty() {
        return Ok(Command::Blank);
    }
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "capabilities" if rest.is_empty() => Ok(Command::Capabilities),
        "list" => match rest {
            "" => Ok(Command::List { for_push: false }),
            "for-push" => Ok(Command::List { for_push: true }),
            _ => Err(malformed("list")),
        },
        "option" => {
            let (name, value) = rest.split_once(' ').ok_or_else(|| malformed("option"))?;
            if name.is_empty() {
                return Err(malformed("option"));
            }
            Ok(Command::Option { name: name.to_string(), value: unquote_c_style(value) })
        }
        "fetch" => {
            let (oid, name) = rest.split_once(' ').ok_or_else(|| malformed("fetch"))?;
            if !is_hex_oid(oid) || name.is_empty() {
                return Err(malformed("fetch"));
            }
            Ok(Command::Fetch { oid: oid.to_string(), name: name.to_string() })
        }
        "push" => {
            let (force, refspec) = match rest.strip_prefix('+') {
                Some(refspec) => (true, refspec),
                None => (false, rest),
            };
            let (src, dst) = refspec.rsplit_once(':').ok_or_else(|| malformed("push"))?;
            if dst.is_empty() {
                return Err(malformed("push"));
            }
            Ok(Command::Push { src: src.to_string(), dst: dst.to_string(), force })
        }
        _ => Err(ParseError::Unknown(line.to_string())),
    }
}

/// Git quotes option values C-style when they need it (transport-helper's `quote_c_style`).
pub fn unquote_c_style(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_string();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.bytes().peekable();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'a') => out.push(0x07),
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(b'r') => out.push(b'\r'),
            Some(b'v') => out.push(0x0b),
            Some(d @ b'0'..=b'3') => {
                let mut n = u32::from(d - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&o @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(o - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                out.push(n as u8);
            }
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Quotes a reason for an `error <ref> <why>` line when it holds a line break.
pub fn quote_reason(why: &str) -> String {
    if !why.contains('\n') && !why.starts_with('"') {
        return why.to_string();
    }
    let mut out = String::from("\"");
    for c in why.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_hex_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn parses_every_command() {
        assert_eq!(parse_line("capabilities\n"), Ok(Command::Capabilities));
        assert_eq!(parse_line("list\n"), Ok(Command::List { for_push: false }));
        assert_eq!(parse_line("list for-push\n"), Ok(Command::List { for_push: true }));
        assert_eq!(
            parse_line("option verbosity 1\n"),
            Ok(Command::Option { name: "verbosity".into(), value: "1".into() })
        );
        assert_eq!(
            parse_line(&format!("fetch {OID} refs/heads/main\n")),
            Ok(Command::Fetch { oid: OID.into(), name: "refs/heads/main".into() })
        );
        assert_eq!(
            parse_line("push +refs/heads/a:refs/heads/b\n"),
            Ok(Command::Push { src: "refs/heads/a".into(), dst: "refs/heads/b".into(), force: true })
        );
        assert_eq!(
            parse_line("push :refs/heads/gone\n"),
            Ok(Command::Push { src: "".into(), dst: "refs/heads/gone".into(), force: false })
        );
        assert_eq!(parse_line("\n"), Ok(Command::Blank));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(matches!(parse_line("frobnicate\n"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse_line("fetch nothex refs/heads/x\n"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_line("push refs/heads/a\n"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_line("push refs/heads/a:\n"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_line("list everything\n"), Err(ParseError::Malformed { .. })));
        assert!(matches!(parse_line("option novalue\n"), Err(ParseError::Malformed { .. })));
    }

    #[test]
    fn unquotes_c_style_values() {
        assert_eq!(unquote_c_style("plain"), "plain");
        assert_eq!(unquote_c_style(r#""a\"b\\c\n\303\251""#), "a\"b\\c\né");
        assert_eq!(quote_reason("two\nlines"), r#""two\nlines""#);
        assert_eq!(quote_reason("fetch first"), "fetch first");
    }
}
