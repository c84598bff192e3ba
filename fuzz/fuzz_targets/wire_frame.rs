//! Wire frames (`dangan::proto`): header frames as a peer reads requests and a client reads
//! responses, then the announced body under its limit.
//!
//! Properties: decoding never panics; whatever decodes re-encodes to a frame that decodes to
//! the same value (postcard accepts overlong varints, so the bytes need not be identical) and
//! is a fixed point from then on; the stream reader agrees with the slice decoder; no body
//! over its limit is ever read.
#![no_main]

use std::fmt::Debug;

use dangan::proto::{
    self, MAX_CHAIN_BODY, MAX_FRAME, MAX_MANIFEST_BODY, MAX_SHARD_BODY, MAX_TX_BODY, ProtoError,
    Request, Response,
};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let frame = proto::encode_frame(msg);
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    assert!(len <= MAX_FRAME, "an encodable message must fit a frame");
    let again: T = proto::decode_frame(&frame[4..]).expect("an encoded frame decodes");
    assert_eq!(&again, msg);
    assert_eq!(
        proto::encode_frame(&again),
        frame,
        "re-encoding is a fixed point"
    );
    let streamed: T = block_on(proto::read_frame(&mut &frame[..])).expect("the reader agrees");
    assert_eq!(&streamed, msg);
}

/// What `peer` does with the bytes of one request stream.
fn serve(stream: &[u8]) {
    let mut r = stream;
    let req: Request = match block_on(proto::read_frame(&mut r)) {
        Ok(req) => req,
        Err(ProtoError::TooLarge { len, max, .. }) => {
            assert!(len > max);
            return;
        }
        Err(_) => return,
    };
    round_trip(&req);
    let (what, len, max) = match req {
        Request::PutShard { len, .. } => ("shard", len, MAX_SHARD_BODY),
        Request::PutManifest { len, .. } | Request::OpenDocument { len, .. } => {
            ("manifest", len, MAX_MANIFEST_BODY)
        }
        Request::SubmitTx { len } => ("transaction", len, MAX_TX_BODY),
        _ => return,
    };
    body(what, len, max, r);
}

/// What `client` does with the bytes of one response stream.
fn answer(stream: &[u8]) {
    let mut r = stream;
    let Ok(resp) = block_on(proto::read_frame::<_, Response>(&mut r)) else {
        return;
    };
    round_trip(&resp);
    let _ = proto::expect_ok(resp.clone());
    let (len, max) = match resp {
        Response::Shard { len } => (len, MAX_SHARD_BODY),
        Response::Manifest { len } => (len, MAX_MANIFEST_BODY),
        Response::ChainBody { len } => (len, MAX_CHAIN_BODY),
        _ => return,
    };
    body("body", len, max, r);
}

fn body(what: &'static str, len: u64, max: u64, mut rest: &[u8]) {
    match proto::check_body_len(what, len, max) {
        Err(_) => assert!(len > max),
        Ok(()) => {
            assert!(len <= max);
            // Reading a body longer than what is left ends in `Closed`; the allocation is
            // bounded by the limit just checked.
            match block_on(proto::read_body(&mut rest, len)) {
                Ok(b) => assert_eq!(b.len() as u64, len),
                Err(e) => assert!(matches!(e, ProtoError::Closed), "{e}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a header frame's body...
    if let Ok(req) = proto::decode_frame::<Request>(data) {
        round_trip(&req);
    }
    if let Ok(resp) = proto::decode_frame::<Response>(data) {
        round_trip(&resp);
    }
    // ...and as a whole stream: length prefix, header, body.
    serve(data);
    answer(data);
});
