//! Every request a client on the socket could send: decoded as the daemon's handlers decode
//! them, then checked by the validation each handler runs first.
#![no_main]

use git_s3_proto as proto;
use git_s3d::requests;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            if let Ok(mut request) = proto::PushRequest::decode(bytes) {
                if requests::push_batch(&mut request).is_ok() {
                    let _ = requests::caller_and_remote(request.caller, request.remote);
                }
            }
        }
        1 => {
            if let Ok(request) = proto::FetchRequest::decode(bytes) {
                let _ = requests::fetch_wanted(request.wanted);
                let _ = requests::caller_and_remote(request.caller, request.remote);
            }
        }
        2 => {
            if let Ok(request) = proto::LfsRequest::decode(bytes) {
                use proto::lfs_request::Request as R;
                match request.request {
                    Some(R::Init(init)) => drop(requests::caller_context(init.caller)),
                    Some(R::Upload(t)) => drop(requests::lfs_transfer(&t, true)),
                    Some(R::Download(t)) => drop(requests::lfs_transfer(&t, false)),
                    None => {}
                }
            }
        }
        _ => {
            if let Ok(request) = proto::DoctorRequest::decode(bytes) {
                let _ = requests::caller_and_remote(request.caller, request.remote);
            }
        }
    }
});
