//! BERTScore with a real-layout BERT checkpoint written here (config.json, model.safetensors
//! with Hugging Face tensor names, tokenizer.json or vocab.txt, random weights): the metric's
//! identities, batching, the checkpoint layouts it accepts and the errors for missing pieces.

use std::path::Path;

use beatlab_lm::LmError;
use beatlab_lm::bert::{BertScore, BertScorer};
use beatlab_lm::hub::ModelSource;
use candle_core::Device;
use tokenizers::Tokenizer;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

#[path = "common/tiny_bert.rs"]
mod tiny_bert;

use tiny_bert::{config, weights};

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const WORDS: &str = "sinus rhythm with a normal heart rate prolonged qt interval atrial \
                     fibrillation left bundle branch block st elevation in v2 the is and of \
                     ##s ##ing . , ; :";

fn vocab() -> Vec<String> {
    SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(WORDS.split_whitespace().map(String::from))
        .collect()
}

fn bert_tokenizer(vocab_file: &Path) -> Tokenizer {
    let model = WordPiece::from_file(vocab_file.to_str().unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    let (cls, sep) = (
        tok.token_to_id("[CLS]").unwrap(),
        tok.token_to_id("[SEP]").unwrap(),
    );
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .unwrap();
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    tok
}

/// How the checkpoint folder is written.
struct Layout {
    /// Tensor-name prefix: `bert.` as in `BertForPreTraining` checkpoints, or none.
    prefix: &'static str,
    /// Write `tokenizer.json` (else only `vocab.txt`).
    tokenizer_json: bool,
    /// Write `model.safetensors`.
    weights: bool,
}

const FULL: Layout = Layout {
    prefix: "bert.",
    tokenizer_json: true,
    weights: true,
};

/// A tiny random BERT checkpoint folder in the Hugging Face layout.
fn write_checkpoint(dir: &Path, layout: &Layout) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = vocab();
    let vocab_file = dir.join("vocab.txt");
    std::fs::write(&vocab_file, vocab.join("\n") + "\n").unwrap();
    let config = config(vocab.len());
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    if layout.tokenizer_json {
        bert_tokenizer(&vocab_file)
            .save(dir.join("tokenizer.json"), true)
            .unwrap();
    }
    if layout.weights {
        candle_core::safetensors::save(
            &weights(&config, layout.prefix, 7),
            dir.join("model.safetensors"),
        )
        .unwrap();
    }
}

fn scorer(dir: &Path) -> BertScorer {
    BertScorer::load(&ModelSource::Dir(dir.to_path_buf()), None, &Device::Cpu).unwrap()
}

fn tiny() -> (tempfile::TempDir, BertScorer) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-bert");
    write_checkpoint(&dir, &FULL);
    let s = scorer(&dir);
    (tmp, s)
}

fn assert_close(a: &BertScore, b: &BertScore, tol: f64) {
    for (x, y) in [
        (a.precision, b.precision),
        (a.recall, b.recall),
        (a.f1, b.f1),
    ] {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

const REFERENCE: &str = "Sinus rhythm with a normal heart rate.";

#[test]
fn identical_texts_score_one() {
    let (_tmp, s) = tiny();
    let score = s.score(REFERENCE, REFERENCE).unwrap();
    for v in [score.precision, score.recall, score.f1] {
        assert!((v - 1.0).abs() < 1e-5, "{score:?}");
    }
}

#[test]
fn swapping_candidate_and_reference_swaps_precision_and_recall() {
    let (_tmp, s) = tiny();
    let a = "atrial fibrillation with left bundle branch block";
    let b = "sinus rhythm";
    let ab = s.score(a, b).unwrap();
    let ba = s.score(b, a).unwrap();
    assert!((ab.precision - ba.recall).abs() < 1e-6, "{ab:?} {ba:?}");
    assert!((ab.recall - ba.precision).abs() < 1e-6, "{ab:?} {ba:?}");
    assert!((ab.f1 - ba.f1).abs() < 1e-6, "{ab:?} {ba:?}");
    // Different lengths: a short candidate is precise but recalls little of a long reference.
    assert!(ab.precision != ab.recall);
    let expected_f1 = 2.0 * ab.precision * ab.recall / (ab.precision + ab.recall);
    assert!((ab.f1 - expected_f1).abs() < 1e-12);
}

#[test]
fn shared_words_score_higher_than_unrelated_ones() {
    let (_tmp, s) = tiny();
    let same = s.score(REFERENCE, REFERENCE).unwrap();
    let overlap = s
        .score("sinus rhythm with a prolonged qt interval.", REFERENCE)
        .unwrap();
    let unrelated = s
        .score("atrial fibrillation; left bundle branch block", REFERENCE)
        .unwrap();
    assert!(same.f1 > overlap.f1, "{same:?} {overlap:?}");
    assert!(overlap.f1 > unrelated.f1, "{overlap:?} {unrelated:?}");
    assert!(unrelated.f1 < 0.99);
}

#[test]
fn empty_texts_score_zero() {
    let (_tmp, s) = tiny();
    assert_eq!(s.score("", REFERENCE).unwrap(), BertScore::default());
    assert_eq!(s.score("   ", REFERENCE).unwrap(), BertScore::default());
    assert_eq!(s.score(REFERENCE, "").unwrap(), BertScore::default());
}

#[test]
fn batched_scores_match_one_at_a_time() {
    let (_tmp, s) = tiny();
    let pairs = [
        (REFERENCE, "sinus rhythm"),
        ("", "normal"),
        (
            "atrial fibrillation with left bundle branch block and st elevation in v2",
            REFERENCE,
        ),
        ("the heart rate is normal", "heart rate normal"),
        ("qt", "prolonged qt interval"),
    ];
    let one_by_one: Vec<BertScore> = pairs.iter().map(|(c, r)| s.score(c, r).unwrap()).collect();
    for batch in [1, 2, 3, 64] {
        let s = scorer(s.files().config.parent().unwrap()).with_batch_size(batch);
        let batched = s.score_batch(&pairs).unwrap();
        assert_eq!(batched.len(), pairs.len());
        for (a, b) in batched.iter().zip(&one_by_one) {
            assert_close(a, b, 1e-5);
        }
    }
}

#[test]
fn unprefixed_names_and_a_vocab_txt_alone_load_the_same_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    write_checkpoint(&full, &FULL);
    let plain = tmp.path().join("plain");
    write_checkpoint(
        &plain,
        &Layout {
            prefix: "",
            tokenizer_json: false,
            weights: true,
        },
    );
    let (a, b) = (scorer(&full), scorer(&plain));
    assert!(matches!(
        b.files().tokenizer,
        beatlab_lm::bert::TokenizerFile::Vocab(_)
    ));
    for (c, r) in [
        ("Sinus rhythm, prolonged QT interval", REFERENCE),
        ("left bundle branch block", "st elevation in v2"),
    ] {
        assert_close(&a.score(c, r).unwrap(), &b.score(c, r).unwrap(), 1e-6);
    }
}

#[test]
fn an_earlier_layer_can_embed_the_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert");
    write_checkpoint(&dir, &FULL);
    let source = ModelSource::Dir(dir.clone());
    let first = BertScorer::load(&source, Some(1), &Device::Cpu).unwrap();
    assert_eq!(first.config().num_hidden_layers, 1);
    let same = first.score(REFERENCE, REFERENCE).unwrap();
    assert!((same.f1 - 1.0).abs() < 1e-5);
    let (c, r) = ("sinus rhythm with a prolonged qt interval", REFERENCE);
    let last = scorer(&dir).score(c, r).unwrap();
    assert!((first.score(c, r).unwrap().f1 - last.f1).abs() > 1e-6);
    let err = BertScorer::load(&source, Some(3), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("1..=2"), "{err}");
}

#[test]
fn missing_pieces_are_errors_that_name_them() {
    let tmp = tempfile::tempdir().unwrap();
    let load =
        |dir: &Path| BertScorer::load(&ModelSource::Dir(dir.to_path_buf()), None, &Device::Cpu);

    // No weights.
    let no_weights = tmp.path().join("no-weights");
    write_checkpoint(
        &no_weights,
        &Layout {
            weights: false,
            ..FULL
        },
    );
    let err = load(&no_weights).unwrap_err();
    match &err {
        LmError::MissingFile { looked_for, .. } => {
            assert_eq!(looked_for, &no_weights.join("model.safetensors"))
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // No tokenizer at all.
    let no_tok = tmp.path().join("no-tokenizer");
    write_checkpoint(&no_tok, &FULL);
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    std::fs::remove_file(no_tok.join("vocab.txt")).unwrap();
    let err = load(&no_tok).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab.txt"),
        "{err}"
    );

    // No folder.
    let err = load(&tmp.path().join("absent")).unwrap_err().to_string();
    assert!(
        err.contains("model folder not found") && err.contains("absent"),
        "{err}"
    );

    // A tensor missing from the weights.
    let partial = tmp.path().join("partial");
    write_checkpoint(&partial, &FULL);
    let config = config(vocab().len());
    let mut tensors = weights(&config, "bert.", 7);
    let dropped = "bert.encoder.layer.1.output.dense.weight";
    assert!(tensors.remove(dropped).is_some());
    candle_core::safetensors::save(&tensors, partial.join("model.safetensors")).unwrap();
    let err = load(&partial).unwrap_err().to_string();
    assert!(err.contains("encoder.layer.1.output.dense.weight"), "{err}");

    // Not a BERT.
    let roberta = tmp.path().join("roberta");
    write_checkpoint(&roberta, &FULL);
    let mut config = config.clone();
    config["model_type"] = "roberta".into();
    std::fs::write(roberta.join("config.json"), config.to_string()).unwrap();
    let err = load(&roberta).unwrap_err().to_string();
    assert!(
        err.contains("roberta") && err.contains("config.json"),
        "{err}"
    );
}
