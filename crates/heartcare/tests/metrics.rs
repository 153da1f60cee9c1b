//! Hand-computed examples for every metric and the option parser's edge cases.

use beatlab_heartcare::metrics::{
    ChoiceOption, HashedTrigramEmbedder, MetricError, Smoothing, TokenEmbedder, accuracy,
    bert_score, bleu_tokenize, choice_accuracy, corpus_bleu, exact_match, format_options,
    lcs_length, mean_rouge_l, parse_choice, parse_options, rouge_l, rouge_tokenize, sentence_bleu,
    squad_normalize, token_f1,
};

fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-4,
        "{what}: got {actual}, expected {expected}"
    );
}

#[test]
fn rouge_tokenizer_matches_rouge_score() {
    fn check(input: &str, expected: &[&str]) {
        assert_eq!(rouge_tokenize(input), expected, "{input:?}");
    }
    check(
        "Sinus-Rhythm!  Normal ECG.",
        &["sinus", "rhythm", "normal", "ecg"],
    );
    check("QRS 120ms", &["qrs", "120ms"]);
    // rouge-score keeps only [a-z0-9]: umlauts split German words.
    check("größer", &["gr", "er"]);
    check("", &[]);
}

#[test]
fn lcs_of_small_sequences() {
    fn check(a: &str, b: &str, expected: usize) {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        assert_eq!(lcs_length(&a, &b), expected, "{a:?} {b:?}");
    }
    check("ABCBDAB", "BDCABA", 4); // the textbook example: BCBA
    check("abc", "", 0);
    check("abc", "abc", 3);
    check("abc", "cba", 1);
}

#[test]
fn rouge_l_hand_computed() {
    fn check(candidate: &str, reference: &str, p: f64, r: f64, f: f64) {
        let score = rouge_l(candidate, reference);
        close(score.precision, p, "precision");
        close(score.recall, r, "recall");
        close(score.f1, f, "f1");
    }
    // the cat [sat] on the mat / the cat [is] on the mat: LCS "the cat on the mat" = 5 of 6.
    check(
        "the cat sat on the mat",
        "the cat is on the mat",
        5.0 / 6.0,
        5.0 / 6.0,
        5.0 / 6.0,
    );
    // LCS 2; P = 2/2, R = 2/3, F = 2 * 1 * (2/3) / (5/3) = 0.8.
    check("sinus rhythm", "normal sinus rhythm", 1.0, 2.0 / 3.0, 0.8);
    // Order matters: "rhythm sinus" vs "sinus rhythm" has LCS 1: P = R = F = 1/2.
    check("rhythm sinus", "sinus rhythm", 0.5, 0.5, 0.5);
    check("", "sinus rhythm", 0.0, 0.0, 0.0);
    check("atrial fibrillation", "sinus rhythm", 0.0, 0.0, 0.0);
    // Mean over pairs: (5/6 + 0.8) / 2.
    close(
        mean_rouge_l(
            &["the cat sat on the mat", "sinus rhythm"],
            &["the cat is on the mat", "normal sinus rhythm"],
        )
        .unwrap(),
        (5.0 / 6.0 + 0.8) / 2.0,
        "mean",
    );
    assert!(matches!(
        mean_rouge_l(&["a"], &[]),
        Err(MetricError::LengthMismatch { .. })
    ));
}

fn toks(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[test]
fn bleu_hand_computed() {
    // hyp  "the cat sat on the mat", ref "the cat is on the mat" (both 6 tokens, BP = 1):
    //   1-grams: the x2, cat, on, mat match -> 5/6
    //   2-grams: "the cat", "on the", "the mat" of 5 -> 3/5
    //   3-grams: "on the mat" of 4 -> 1/4
    //   4-grams: none of 3 -> 0/3
    // BLEU-1 = 5/6; BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2); BLEU-3 = (1/8)^(1/3) = 1/2.
    // BLEU-4: 0 unsmoothed; nltk method1 (eps 0.1): p4 = 0.1/3, (1/8 * 1/30)^(1/4) = 240^(-1/4);
    // exp / method3: p4 = 1/(2*3), (1/8 * 1/6)^(1/4) = 48^(-1/4).
    let hyp = toks("the cat sat on the mat");
    let refs = vec![toks("the cat is on the mat")];
    let plain = sentence_bleu(&hyp, &refs, Smoothing::None);
    assert_eq!(plain.matches, [5, 3, 1, 0]);
    assert_eq!(plain.totals, [6, 5, 4, 3]);
    close(plain.brevity_penalty, 1.0, "BP");
    close(plain.bleu[0], 5.0 / 6.0, "BLEU-1");
    close(plain.bleu[1], 0.5f64.sqrt(), "BLEU-2");
    close(plain.bleu[2], 0.5, "BLEU-3");
    close(plain.bleu[3], 0.0, "BLEU-4 unsmoothed");
    let eps = sentence_bleu(&hyp, &refs, Smoothing::Epsilon(0.1));
    close(eps.bleu[3], 240f64.powf(-0.25), "BLEU-4 method1");
    close(eps.bleu[2], 0.5, "smoothing leaves non-zero orders alone");
    let exp = sentence_bleu(&hyp, &refs, Smoothing::Exp);
    close(exp.bleu[3], 48f64.powf(-0.25), "BLEU-4 exp");
}

#[test]
fn bleu_brevity_penalty_and_reference_choice() {
    // "the cat" vs a 6-token reference: p1 = p2 = 1, BP = exp(1 - 6/2) = e^-2.
    let short = sentence_bleu(
        &toks("the cat"),
        &[toks("the cat is on the mat")],
        Smoothing::None,
    );
    close(short.brevity_penalty, (-2.0f64).exp(), "BP");
    close(short.bleu[0], (-2.0f64).exp(), "BLEU-1");
    close(short.bleu[1], (-2.0f64).exp(), "BLEU-2");
    // Closest reference length: 4 tokens vs refs of 3 and 6 -> 3, longer than it, BP = 1.
    let closest = sentence_bleu(
        &toks("a b c d"),
        &[toks("a b c"), toks("a b c d e f")],
        Smoothing::None,
    );
    assert_eq!(closest.reference_length, 3);
    close(closest.brevity_penalty, 1.0, "BP");
    // Tie (3 and 5 around 4) goes to the shorter reference, as nltk.
    let tie = sentence_bleu(
        &toks("a b c d"),
        &[toks("a b c d e"), toks("a b c")],
        Smoothing::None,
    );
    assert_eq!(tie.reference_length, 3);
    // Clipping: "the the the" against "the cat" matches 1 of 3 unigrams.
    let clipped = sentence_bleu(&toks("the the the"), &[toks("the cat")], Smoothing::None);
    assert_eq!(clipped.matches[0], 1);
    // No unigram match: 0 even with smoothing (nltk).
    let none = sentence_bleu(&toks("x y"), &[toks("a b")], Smoothing::Exp);
    assert_eq!(none.bleu, [0.0; 4]);
}

#[test]
fn corpus_bleu_sums_counts_before_dividing() {
    // Pair 1: "a b" vs "a b": 2/2 unigrams, 1/1 bigrams. Pair 2: "c d" vs "c e": 1/2, 0/1.
    // Corpus: p1 = 3/4, p2 = 1/2, lengths 4 vs 4 -> BLEU-2 = sqrt(3/8).
    let scores = corpus_bleu(
        &[toks("a b"), toks("c d")],
        &[vec![toks("a b")], vec![toks("c e")]],
        Smoothing::None,
    )
    .unwrap();
    assert_eq!(scores.matches[..2], [3, 1]);
    close(scores.bleu[0], 0.75, "BLEU-1");
    close(scores.bleu[1], (3.0f64 / 8.0).sqrt(), "BLEU-2");
    assert!(corpus_bleu(&[toks("a")], &[], Smoothing::None).is_err());
}

#[test]
fn bleu_tokenizer_separates_punctuation() {
    fn check(input: &str, expected: &[&str]) {
        assert_eq!(bleu_tokenize(input), expected, "{input:?}");
    }
    check(
        "Sinus rhythm, 72 bpm.",
        &["sinus", "rhythm", ",", "72", "bpm", "."],
    );
    check(
        "Sinusrhythmus. Überdrehter",
        &["sinusrhythmus", ".", "überdrehter"],
    );
}

#[test]
fn squad_token_f1_hand_computed() {
    fn check(prediction: &str, gold: &str, expected_f1: f64) {
        close(
            token_f1(prediction, gold).f1,
            expected_f1,
            &format!("{prediction:?} vs {gold:?}"),
        );
    }
    // pred "pr interval is 212 ms" (5), gold "pr interval 212 ms" (4), 4 shared:
    // P = 4/5, R = 1, F1 = 2 * 0.8 / 1.8 = 8/9.
    check(
        "The PR interval is 212 ms.",
        "PR interval 212 ms",
        8.0 / 9.0,
    );
    // Articles and punctuation vanish: exact.
    check("A sinus rhythm!", "sinus rhythm", 1.0);
    // Multiset overlap: pred "ms ms" vs gold "ms": 1 shared, P = 1/2, R = 1, F1 = 2/3.
    check("ms ms", "ms", 2.0 / 3.0);
    check("", "", 1.0);
    check("the", "", 1.0); // both normalise to nothing
    check("", "sinus", 0.0);
    check("atrial", "sinus", 0.0);
    assert_eq!(squad_normalize("  The  QRS, an   axis "), "qrs axis");
    assert!(exact_match("The answer.", "answer"));
    assert!(!exact_match("answer b", "answer"));
}

/// Fixed 2-d vectors: a = (1, 0), b = (0, 1), c = (1, 1)/sqrt 2.
struct ToyEmbedder;

impl TokenEmbedder for ToyEmbedder {
    type Error = String;
    fn embed(&self, text: &str) -> Result<Vec<Vec<f32>>, String> {
        text.split_whitespace()
            .map(|t| match t {
                "a" => Ok(vec![1.0, 0.0]),
                "b" => Ok(vec![0.0, 1.0]),
                "c" => Ok(vec![1.0, 1.0]),
                other => Err(format!("unknown token {other}")),
            })
            .collect()
    }
}

#[test]
fn bert_score_greedy_matching_hand_computed() {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    // cand "a b", ref "a c": cos(a,a) = 1, cos(a,c) = s, cos(b,a) = 0, cos(b,c) = s.
    // P = (max(1, s) + max(0, s)) / 2 = (1 + s)/2; R = (max(1, 0) + max(s, s)) / 2 = (1 + s)/2.
    let score = bert_score(&ToyEmbedder, "a b", "a c").unwrap();
    close(score.precision, (1.0 + s) / 2.0, "P");
    close(score.recall, (1.0 + s) / 2.0, "R");
    close(score.f1, (1.0 + s) / 2.0, "F");
    // cand "a", ref "a c": P = 1, R = (1 + s)/2, F = 2PR/(P+R).
    let score = bert_score(&ToyEmbedder, "a", "a c").unwrap();
    let r = (1.0 + s) / 2.0;
    close(score.precision, 1.0, "P");
    close(score.recall, r, "R");
    close(score.f1, 2.0 * r / (1.0 + r), "F");
    // Empty side scores 0; embedder errors are reported.
    assert_eq!(bert_score(&ToyEmbedder, "", "a").unwrap().f1, 0.0);
    assert!(matches!(
        bert_score(&ToyEmbedder, "z", "a"),
        Err(MetricError::Embedder {
            which: "candidate",
            ..
        })
    ));
}

#[test]
fn hashed_trigram_embedder_scores_identity_as_one() {
    let e = HashedTrigramEmbedder { dim: 256 };
    let same = bert_score(&e, "sinus bradycardia", "sinus bradycardia").unwrap();
    close(same.f1, 1.0, "identical texts");
    let related = bert_score(&e, "bradycardia", "sinus bradycardia").unwrap();
    let unrelated = bert_score(&e, "fibrillation", "sinus bradycardia").unwrap();
    assert!(related.f1 > unrelated.f1);
}

#[test]
fn accuracy_counts() {
    close(accuracy([true, false, true, true]), 0.75, "3 of 4");
    close(accuracy(Vec::<bool>::new()), 0.0, "empty");
}

fn options(texts: &[&str]) -> Vec<ChoiceOption> {
    texts
        .iter()
        .zip('A'..)
        .map(|(t, letter)| ChoiceOption {
            letter,
            text: t.to_string(),
        })
        .collect()
}

#[test]
fn options_parse_from_heartcare_questions() {
    fn check(question: &str, expected: &[&str]) {
        let parsed = parse_options(question);
        assert_eq!(parsed, options(expected), "{question:?}");
    }
    check(
        "Based on the ECG signal of a 68-year-old female patient, Which diagnosis is most likely? \
         A: Ventricular tachycardia; B: No abnormality detected; C: Non-diagnostic T abnormalities; \
         D: Anterior myocardial infarction",
        &[
            "Ventricular tachycardia",
            "No abnormality detected",
            "Non-diagnostic T abnormalities",
            "Anterior myocardial infarction",
        ],
    );
    // "QA:" is not an option marker (A inside a word), and the options end with a '?'.
    check("In this QA: which? A: Yes; B: No?", &["Yes", "No"]);
    check("What is the rhythm?", &[]);
    let opts = options(&["Yes", "No"]);
    assert_eq!(format_options(&opts), "A: Yes; B: No");
    assert_eq!(
        parse_options(&format!("Same? {}", format_options(&opts))),
        opts
    );
}

#[test]
fn choice_parsing_edge_cases() {
    let diag = options(&[
        "Sinus rhythm",
        "Atrial fibrillation",
        "Sinus bradycardia",
        "Atrial flutter",
    ]);
    fn check(generation: &str, opts: &[ChoiceOption], expected: Option<char>) {
        assert_eq!(parse_choice(generation, opts), expected, "{generation:?}");
    }
    // Bare letters.
    check("B", &diag, Some('B'));
    check(" (C) ", &diag, Some('C'));
    check("D.", &diag, Some('D'));
    check("E", &diag, None); // not an option
    // Explicit statements.
    check("The answer is B: atrial fibrillation", &diag, Some('B'));
    check("Answer: (C)", &diag, Some('C'));
    check("I would choose option D here.", &diag, Some('D'));
    check("**Answer:** A", &diag, Some('A'));
    // Leading letter with punctuation.
    check("C: Sinus bradycardia, rate 48 bpm", &diag, Some('C'));
    check("A) sinus rhythm", &diag, Some('A'));
    // Option text only; the longer matching option wins over its own prefix.
    check(
        "The ECG shows atrial flutter with 2:1 block.",
        &diag,
        Some('D'),
    );
    check("sinus bradycardia", &diag, Some('C'));
    // "A normal ..." is an article, not option A: falls through to text matching.
    check("A normal sinus rhythm is seen", &diag, Some('A'));
    check("A normal tracing", &diag, None);
    // Two different options named: ambiguous.
    check("Either atrial fibrillation or atrial flutter", &diag, None);
    check("", &diag, None);
    // Yes/no and ECG 1/ECG 2 comparisons.
    let yes_no = options(&["Yes", "No"]);
    check("Yes, both show sinus rhythm.", &yes_no, Some('A'));
    check("No.", &yes_no, Some('B'));
    check("no", &yes_no, Some('B'));
    let which = options(&["ECG 1", "ECG 2"]);
    check(
        "ECG 2 has the wider QRS complex (132 ms).",
        &which,
        Some('B'),
    );
    check("The first one, ECG 1.", &which, Some('A'));
    // Non-ASCII text never panics.
    check("Die Antwort ist İ B", &diag, None);
}

#[test]
fn choice_accuracy_over_generations() {
    let opts = options(&["Yes", "No"]);
    let items = [
        ("A", 'A', opts.as_slice()),
        ("The answer is B", 'B', opts.as_slice()),
        ("Yes", 'B', opts.as_slice()),
        ("unsure", 'A', opts.as_slice()),
    ];
    close(choice_accuracy(items), 0.5, "2 of 4");
}
