//! Mutation fuzzing of the frame decoders: whatever bytes arrive, decoding returns a result
//! and never panics, and valid frames still decode after a round trip.

use magpie_proto::frame::{ClientFrame, FrameHead};
use magpie_proto::{Codec, ServerFrame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn seeds() -> Vec<serde_json::Value> {
    vec![
        json!({"id": 1, "op": "login", "data": {"user_id": "alice", "token": "t", "device_id": "d", "platform": "ios"}}),
        json!({"id": 2, "op": "send", "data": {"to": {"kind": "user", "id": "bob"}, "client_msg_id": "c",
            "content": {"type": "image", "body": {"url": "u", "width": 3}}, "ext": {"k": [1, 2.5, null]}}}),
        json!({"data": {"conversation_id": "c2c:a:b", "seq": 3}, "op": "mark_read", "id": 3}),
        json!({"id": 4, "op": "get_messages", "data": {"conversation_id": "c2c:a:b", "direction": "forward", "time": 9}}),
        json!({"id": 5, "op": "ping"}),
        json!({"type": "event", "event": "message", "data": {"id": "1", "conversation_id": "c2c:a:b", "seq": 1,
            "from": "a", "to": {"kind": "user", "id": "b"}, "client_msg_id": "x",
            "content": {"type": "text", "body": {"text": "hi"}}, "server_time": 1}}),
        json!({"type": "error", "id": null, "op": null, "error": {"code": 1000, "message": "m"}}),
    ]
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=6) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[at] = rng.random(),
            1 => bytes[at] ^= 1 << rng.random_range(0..8),
            2 => bytes.insert(at, rng.random()),
            3 => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
}

#[test]
fn mutated_frames_never_panic_the_decoders() {
    let mut rng = StdRng::seed_from_u64(0x6d61_6770_6965);
    for codec in [Codec::Json, Codec::MsgPack] {
        let encoded: Vec<Vec<u8>> = seeds()
            .iter()
            .map(|v| match codec {
                Codec::Json => serde_json::to_vec(v).expect("json"),
                Codec::MsgPack => rmp_serde::to_vec_named(v).expect("msgpack"),
            })
            .collect();
        for round in 0..20_000 {
            let mut bytes = encoded[round % encoded.len()].clone();
            mutate(&mut rng, &mut bytes);
            let _ = codec.decode::<ClientFrame>(&bytes);
            let _ = codec.decode::<ServerFrame>(&bytes);
            let _ = codec.decode::<FrameHead>(&bytes);
        }
        for _ in 0..2_000 {
            let len = rng.random_range(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = codec.decode::<ClientFrame>(&bytes);
            let _ = codec.decode::<ServerFrame>(&bytes);
        }
    }
}

#[test]
fn the_seed_frames_are_valid() {
    let frames = seeds();
    for (i, frame) in frames.iter().enumerate() {
        let bytes = serde_json::to_vec(frame).expect("json");
        let ok = if frame.get("type").is_some() {
            Codec::Json.decode::<ServerFrame>(&bytes).is_ok()
        } else {
            Codec::Json.decode::<ClientFrame>(&bytes).is_ok()
        };
        assert!(
            ok,
            "seed {i} must decode, or the fuzzing starts from garbage"
        );
    }
}
