//! Local S3-compatible servers on loopback: moto (AWS-faithful, conditional writes, in memory)
//! and s3s-fs (SigV4 enforced, on disk). Each runs as a child process on a free port and is
//! killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

pub const ACCESS_KEY: &str = "AKIDTESTTESTTEST";
pub const SECRET_KEY: &str = "test-secret-key-that-must-never-be-logged";
const START_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Moto,
    S3sFs,
}

pub struct S3Server {
    pub kind: ServerKind,
    pub endpoint: String,
    pub port: u16,
    /// s3s-fs's data folder (buckets are folders, objects files).
    pub data_dir: Option<PathBuf>,
    scratch: PathBuf,
    child: Option<Child>,
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3Server {
    pub fn start(kind: ServerKind, scratch: &Path) -> Self {
        let port = free_port();
        let (child, data_dir) = spawn(kind, port, scratch);
        let endpoint = format!("http://127.0.0.1:{port}");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = runtime.block_on(test_client(&endpoint));
        let mut server = Self {
            kind,
            endpoint,
            port,
            data_dir,
            scratch: scratch.to_path_buf(),
            child: Some(child),
            runtime,
            client,
        };
        server.wait_until_listening();
        server
    }

    /// Stops the server as a crash would (s3s-fs keeps its data on disk; moto loses it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.kind, self.port, &self.scratch).0);
        self.wait_until_listening();
    }

    fn wait_until_listening(&mut self) {
        let (kind, port) = (self.kind, self.port);
        let scratch = self.scratch.clone();
        crate::wait_for(&format!("{kind:?} to listen on port {port}"), START_LIMIT, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{kind:?} exited at start-up with {status}; see {}", scratch.display());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.runtime.block_on(self.client.create_bucket().bucket(bucket).send()).expect("create bucket");
    }

    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            let mut pages = self.client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.expect("list objects");
                keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            }
            keys.sort();
            keys
        })
    }

    /// The bytes and the number of objects under `prefix`.
    pub fn bytes_and_keys_held(&self, bucket: &str, prefix: &str) -> (u64, u64) {
        self.runtime.block_on(async {
            let (mut total, mut keys) = (0u64, 0u64);
            let mut pages = self.client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.expect("list objects");
                total += page.contents().iter().map(|o| o.size().unwrap_or(0) as u64).sum::<u64>();
                keys += page.contents().len() as u64;
            }
            (total, keys)
        })
    }

    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.runtime
            .block_on(self.client.put_object().bucket(bucket).key(key).body(ByteStream::from(body)).send())
            .expect("put object");
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.runtime.block_on(async {
            let out = self.client.get_object().bucket(bucket).key(key).send().await.expect("get object");
            out.body.collect().await.expect("read object").to_vec()
        })
    }

    /// `(etag, last modified)` of an object.
    pub fn head(&self, bucket: &str, key: &str) -> Option<(String, aws_sdk_s3::primitives::DateTime)> {
        self.runtime.block_on(async {
            let out = self.client.head_object().bucket(bucket).key(key).send().await.ok()?;
            Some((out.e_tag().unwrap_or_default().to_string(), *out.last_modified()?))
        })
    }

    /// Size of an object in bytes.
    pub fn size(&self, bucket: &str, key: &str) -> Option<u64> {
        self.runtime.block_on(async {
            let out = self.client.head_object().bucket(bucket).key(key).send().await.ok()?;
            out.content_length().map(|l| l.max(0) as u64)
        })
    }

    /// How an object is encrypted at rest: `(x-amz-server-side-encryption, KMS key id, bucket
    /// key enabled)`.
    pub fn encryption(&self, bucket: &str, key: &str) -> (Option<String>, Option<String>, Option<bool>) {
        self.runtime.block_on(async {
            let out = self.client.head_object().bucket(bucket).key(key).send().await.expect("head object");
            let sse = out.server_side_encryption().map(|s| s.as_str().to_string());
            (sse, out.ssekms_key_id().map(str::to_string), out.bucket_key_enabled())
        })
    }

    /// The client the support code uses, for benchmarks that talk to S3 directly.
    pub fn client(&self) -> (&tokio::runtime::Runtime, &aws_sdk_s3::Client) {
        (&self.runtime, &self.client)
    }

    pub fn copy(&self, bucket: &str, from: &str, to: &str) {
        self.runtime
            .block_on(self.client.copy_object().bucket(bucket).key(to).copy_source(format!("{bucket}/{from}")).send())
            .expect("copy object");
    }

    /// The user metadata of an object (`x-amz-meta-*`, without the prefix).
    pub fn metadata(&self, bucket: &str, key: &str) -> std::collections::HashMap<String, String> {
        self.runtime.block_on(async {
            let out = self.client.head_object().bucket(bucket).key(key).send().await.expect("head object");
            out.metadata().cloned().unwrap_or_default()
        })
    }

    /// Writes an object again with other user metadata, as another client could.
    pub fn replace_metadata(&self, bucket: &str, key: &str, metadata: &[(&str, &str)]) {
        let body = self.get(bucket, key);
        let mut put = self.client.put_object().bucket(bucket).key(key).body(ByteStream::from(body));
        for (k, v) in metadata {
            put = put.metadata(*k, *v);
        }
        self.runtime.block_on(put.send()).expect("put object");
    }

    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        self.open_uploads(bucket, "").len()
    }

    /// Starts a multipart upload and uploads one part, as a push killed mid-upload leaves it.
    pub fn abandoned_upload(&self, bucket: &str, key: &str) {
        self.runtime.block_on(async {
            let created =
                self.client.create_multipart_upload().bucket(bucket).key(key).send().await.expect("create upload");
            let id = created.upload_id().expect("upload id");
            let part = ByteStream::from(vec![0u8; 1024]);
            self.client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(1)
                .body(part)
                .send()
                .await
                .expect("upload part");
        })
    }

    /// Starts a multipart upload whose key the server cannot send back in XML (it holds a control
    /// character): the server's answer does not parse, but the upload is open.
    pub fn upload_with_unsendable_key(&self, bucket: &str, key: &str) {
        let started = self.runtime.block_on(self.client.create_multipart_upload().bucket(bucket).key(key).send());
        match started {
            Ok(_) => {}
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {}
            Err(e) => panic!("create upload: {e:?}"),
        }
    }

    /// Keys of the multipart uploads in progress under `prefix`.
    pub fn open_uploads(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.runtime.block_on(async {
            let out =
                self.client.list_multipart_uploads().bucket(bucket).prefix(prefix).send().await.expect("list uploads");
            out.uploads().iter().filter_map(|u| u.key().map(str::to_string)).collect()
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `kind` on `port`, logging into `scratch` (appending, so restarts keep the history).
fn spawn(kind: ServerKind, port: u16, scratch: &Path) -> (Child, Option<PathBuf>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(scratch.join(format!("{kind:?}.log")))
        .expect("server log");
    let log_err = log.try_clone().expect("server log");
    let (mut command, data_dir) = match kind {
        ServerKind::Moto => {
            let program = find_tool("moto/bin/moto_server", "moto_server");
            let mut command = Command::new(program);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            (command, None)
        }
        ServerKind::S3sFs => {
            let data = scratch.join("s3s-data");
            std::fs::create_dir_all(&data).expect("s3s data dir");
            let mut command = Command::new(find_tool("bin/s3s-fs", "s3s-fs"));
            command
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--access-key",
                    ACCESS_KEY,
                    "--secret-key",
                    SECRET_KEY,
                ])
                .arg(&data);
            (command, Some(data))
        }
    };
    let child = command
        .env("TMPDIR", crate::temp_dir_in(scratch))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {kind:?} ({e}); run scripts/install-test-deps.sh"));
    (child, data_dir)
}

async fn test_client(endpoint: &str) -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(credentials)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn find_tool(in_tools: &str, on_path: &str) -> PathBuf {
    let local = crate::tools_dir().join(in_tools);
    if local.is_file() { local } else { PathBuf::from(on_path) }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
