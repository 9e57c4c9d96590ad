//! The tokenizer on a tiny vocabulary, and streaming detokenization.

use candle_core::quantized::GgmlDType;

use crate::common::{spec, tiny};

#[test]
fn merges_control_tokens_and_round_trip() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 1), 1);
    let tok = engine.tokenizer();
    // " the" merges to one token; "<|im_start|>" is a control token when parsed.
    let ids = tok.encode("<|im_start|>user the there", true).unwrap();
    assert_eq!(ids[0], 1);
    assert!(tok.is_control(1));
    let plain = tok.encode("<|im_start|>", false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&1));
    assert_eq!(tok.decode(&ids, false), "<|im_start|>user the there");
    assert_eq!(tok.decode(&ids, true), "user the there");
    assert_eq!(tok.end_of_generation(), &[2, 0]);
    for s in ["", "  spaces  ", "tabs\tand\nnewlines\r\n", "café 中文 日本語 😀👍🏽 🇫🇷", "x = [1, 22, 333];"] {
        let ids = tok.encode(s, true).unwrap();
        assert_eq!(tok.decode(&ids, false), s);
    }
}

#[test]
fn streaming_never_splits_a_character() {
    let (_d, _p, engine) = tiny(spec(GgmlDType::Q8_0, 64, 1), 1);
    let tok = engine.tokenizer();
    for _ in 0..200 {
        // Random text over multi-byte characters: every byte is its own token here.
        let s: String = (0..12)
            .map(|_| match rand::random::<u8>() % 4 {
                0 => 'a',
                1 => 'é',
                2 => '中',
                _ => '🦀',
            })
            .collect();
        let ids = tok.encode(&s, false).unwrap();
        let mut stream = tok.decode_stream(false);
        let mut out = String::new();
        for id in ids {
            let piece = stream.step(tok, id);
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        out.push_str(&stream.finish());
        assert_eq!(out, s);
    }
    // An invalid byte sequence is replaced, not passed on or held forever.
    let mut stream = tok.decode_stream(false);
    let ff = 3 + 0xFF; // the byte 0xFF (byte tokens follow the 3 control tokens)
    assert_eq!(tok.token_bytes(ff), &[0xFF]);
    assert_eq!(stream.step(tok, ff), "\u{FFFD}");
    let e9 = 3 + 0xE9;
    assert_eq!(stream.step(tok, e9), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}
