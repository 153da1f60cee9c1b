//! The byte-level BPE tokenizer: training, exact round trips, atomic special tokens, save/load,
//! and adding the special tokens to a foreign `tokenizer.json`.

mod common;

use beatlab_lm::tokenizer::MIN_VOCAB_SIZE;
use beatlab_lm::{LmError, LmTokenizer, SPECIAL_TOKENS, Special};
use common::corpus;

fn trained(vocab: usize) -> LmTokenizer {
    LmTokenizer::train(corpus(), vocab).unwrap()
}

fn check_round_trip(tok: &LmTokenizer, text: &str) {
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text, "ids {ids:?}");
}

#[test]
fn trains_to_the_requested_size_with_specials_first() {
    let tok = trained(320);
    // BPE stops early when no pair occurs twice; it never exceeds the request.
    assert!(
        tok.vocab_size() <= 320 && tok.vocab_size() > MIN_VOCAB_SIZE,
        "{}",
        tok.vocab_size()
    );
    for (k, special) in Special::ALL.iter().enumerate() {
        assert_eq!(tok.special_id(*special), k as u32);
        assert_eq!(tok.token_to_id(special.text()), Some(k as u32));
    }
    assert_eq!(tok.pad_id(), 0);
    // Merges were learned: common words take fewer tokens than bytes.
    let text = "sinus rhythm";
    assert!(tok.encode(text).unwrap().len() < text.len());
}

#[test]
fn round_trips_seen_and_unseen_text_exactly() {
    let tok = trained(300);
    for text in corpus() {
        check_round_trip(&tok, &text);
    }
    check_round_trip(
        &tok,
        "QTc 452 ms — ΔST ↑ 2 mm in V2/V3; ünïcödé, tabs\tand\nnewlines  ",
    );
    check_round_trip(&tok, "");
}

#[test]
fn special_tokens_stay_atomic() {
    let tok = trained(300);
    let check = |text: &str, special: Special| {
        let ids = tok.encode(text).unwrap();
        let id = tok.special_id(special);
        assert_eq!(
            ids.iter().filter(|&&i| i == id).count(),
            1,
            "{text}: {ids:?}"
        );
        // Decoding without specials drops exactly that text.
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            text.replace(special.text(), "")
        );
    };
    check("<|user|>hello", Special::User);
    check("abc<image_start>def", Special::ImageStart);
    check("x<signal_end>y", Special::SignalEnd);
    check("predict <prediction> now", Special::Prediction);
    let ids = tok
        .encode("<image_start><image_end><signal_start><signal_end>")
        .unwrap();
    assert_eq!(ids, vec![4, 5, 6, 7]);
    // A special token's text split by a space is not the special token.
    let ids = tok.encode("<|end |>").unwrap();
    assert!(!ids.contains(&tok.special_id(Special::End)));
}

#[test]
fn saves_and_loads_identically() {
    let tok = trained(300);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let loaded = LmTokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    for text in corpus() {
        assert_eq!(loaded.encode(&text).unwrap(), tok.encode(&text).unwrap());
    }
    for special in Special::ALL {
        assert_eq!(loaded.special_id(special), tok.special_id(special));
    }
}

#[test]
fn too_small_vocabulary_is_rejected() {
    match LmTokenizer::train(corpus(), 100) {
        Err(LmError::Config { field, reason, .. }) => {
            assert_eq!(field, "vocab_size");
            assert!(reason.contains(&MIN_VOCAB_SIZE.to_string()), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn foreign_tokenizer_gets_the_special_tokens_appended() {
    // A checkpoint tokenizer that knows none of our special tokens.
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let vocab = [("[UNK]", 0u32), ("sinus", 1), ("rhythm", 2), ("normal", 3)]
        .into_iter()
        .map(|(w, i)| (w.to_string(), i))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut foreign = tokenizers::Tokenizer::new(model);
    foreign.with_pre_tokenizer(Some(Whitespace {}));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    foreign.save(&path, false).unwrap();

    let tok = LmTokenizer::from_file(&path).unwrap();
    assert_eq!(tok.vocab_size(), 4 + SPECIAL_TOKENS.len());
    for (k, special) in Special::ALL.iter().enumerate() {
        assert_eq!(tok.special_id(*special), 4 + k as u32);
    }
    assert_eq!(
        tok.encode("<|user|> sinus rhythm <|end|>").unwrap(),
        vec![
            tok.special_id(Special::User),
            1,
            2,
            tok.special_id(Special::End)
        ]
    );
    // Loading it again (now with the specials saved) keeps the same ids.
    let again_path = dir.path().join("again.json");
    tok.save(&again_path).unwrap();
    let again = LmTokenizer::from_file(&again_path).unwrap();
    assert_eq!(again.vocab_size(), tok.vocab_size());
    assert_eq!(
        again.special_id(Special::Prediction),
        tok.special_id(Special::Prediction)
    );
}

#[test]
fn missing_tokenizer_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    match LmTokenizer::from_file(&path) {
        Err(LmError::MissingFile { looked_for, .. }) => assert_eq!(looked_for, path),
        other => panic!("expected MissingFile, got {other:?}"),
    }
}
