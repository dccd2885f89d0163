//! Fuzzes every decoder of the wire protocol: frames read from a byte stream,
//! then each body decoder on the same bytes. None may panic; a frame that
//! decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lego_wire::auth::{decode_challenge, Hello};
use lego_wire::control::{from_body, ClusterState, HeartbeatReq, RegisterReq};
use lego_wire::frame::{read_frame, write_frame};
use lego_wire::fs::{check_path, FsReply, FsRequest};
use lego_wire::jobs::{OutputReq, StdinReq};
use lego_wire::pages::{
    CloneSpace, CopyPages, FreeRange, FreeSpace, ReadPages, ReadPagesReply, WritePages,
    WriteReply,
};
use lego_wire::{ErrorBody, Request};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(f) = read_frame(&mut r, 1 << 16) {
        let mut again = Vec::new();
        write_frame(&mut again, f.header.op, f.header.flags, f.header.req_id, &[&f.body]).unwrap();
        let consumed = again.len();
        assert_eq!(again[..], data[data.len() - r.len() - consumed..data.len() - r.len()]);
    }
    let _ = ReadPages::decode(data);
    if let Ok(reply) = ReadPagesReply::decode(data) {
        assert_eq!(reply.pages().count(), reply.present.len());
    }
    if let Ok(w) = WritePages::decode(data) {
        assert_eq!(w.encode(), data);
    }
    if let Ok(c) = CopyPages::decode(data) {
        assert_eq!(c.encode(), data);
    }
    let _ = WriteReply::decode(data);
    let _ = FreeRange::decode(data);
    let _ = <FreeRange as Request>::decode_reply(data);
    for r in [
        <FreeSpace as Request>::decode(data).map(|r| r.encode()),
        <CloneSpace as Request>::decode(data).map(|r| r.encode()),
        <StdinReq as Request>::decode(data).map(|r| r.encode()),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(r, data);
    }
    if let Ok(out) = OutputReq::decode_reply(data) {
        out.chunks().unwrap();
    }
    let _ = ErrorBody::decode(data);
    let _ = Hello::decode(data);
    let _ = decode_challenge(data);
    let _ = from_body::<ClusterState>(data);
    let _ = from_body::<RegisterReq>(data);
    let _ = from_body::<HeartbeatReq>(data);
    let _ = lego_wire::auth::challenge_server(data);
    let _ = std::str::from_utf8(data).map(|t| t.parse::<lego_wire::auth::JoinToken>());
    let _ = from_body::<lego_wire::identity::JoinReq>(data);
    let _ = from_body::<lego_wire::identity::JoinResp>(data);
    let _ = from_body::<lego_wire::identity::PeerKeyReq>(data);
    let _ = from_body::<lego_wire::identity::HeartbeatResp>(data);
    if let Ok(r) = FsRequest::decode(data) {
        let again = r.encode();
        assert_eq!(FsRequest::decode(&again).unwrap(), r);
    }
    let _ = FsReply::decode(data);
    let _ = check_path(data);
});
