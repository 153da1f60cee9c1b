//! The benchmark's text metrics: ROUGE-L, BLEU-1..4, SQuAD token F1 and exact match, a
//! BERTScore-style F1 over any token embedder, accuracy, and the option parser that turns a free
//! generation ("The answer is B: sinus rhythm") into the letter it chose.
//!
//! Conventions, chosen so numbers are comparable with the usual Python packages:
//! - **ROUGE-L** follows `rouge-score` (`RougeScorer(["rougeL"])`, `use_stemmer=False`): text is
//!   lower-cased, every run of characters outside `[a-z0-9]` becomes a separator (so non-ASCII
//!   letters such as German umlauts split words, exactly as `rouge-score` does), and the score is
//!   the LCS F-measure with beta = 1 (`fmeasure = 2PR / (P + R)`), without sentence splitting
//!   (that is `rougeLsum`).
//! - **BLEU** follows `nltk.translate.bleu_score`: clipped n-gram precisions, brevity penalty
//!   with the closest reference length (ties to the shorter), BLEU-n = geometric mean of
//!   p_1..p_n with uniform weights 1/n (cumulative, as captioning papers report BLEU-1..4),
//!   zero when no unigram matches. [`Smoothing::None`] is nltk's default (any zero precision
//!   gives 0), [`Smoothing::Epsilon`] is nltk's `method1` (0.1 added to zero counts), and
//!   [`Smoothing::Exp`] is nltk's `method3`, which equals sacrebleu's default `exp` smoothing.
//!   [`corpus_bleu`] sums counts over the corpus (nltk `corpus_bleu`, sacrebleu's corpus
//!   score); [`sentence_bleu`] is the same on one pair. Tokenisation ([`bleu_tokenize`]) is
//!   lower-cased words with each punctuation mark its own token; nltk itself takes
//!   pre-tokenised input, so pass your own tokens to compare against a specific pipeline.
//! - **Token F1 / exact match** follow the SQuAD v1.1/v2 evaluation script: lower-case, drop
//!   ASCII punctuation, drop the articles a/an/the, split on whitespace; multiset overlap.
//! - **BERTScore-style F1** is greedy cosine matching without idf weighting and without
//!   baseline rescaling (bert-score's defaults `idf=False`, `rescale_with_baseline=False`).

use std::collections::HashMap;

/// Precision, recall and F1 of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    fn from_pr(precision: f64, recall: f64) -> Self {
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            f1,
        }
    }
}

/// Errors of metrics that call out to an embedder or receive mismatched inputs.
#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    /// The token embedder failed on a text.
    #[error("token embedder failed on {which}: {message}")]
    Embedder {
        which: &'static str,
        message: String,
    },
    /// Two token vectors have different dimensions.
    #[error("embedding dimension mismatch: {left} vs {right}")]
    DimensionMismatch { left: usize, right: usize },
    /// Parallel input lists differ in length.
    #[error("{what}: {left} items vs {right} items")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// ROUGE-L

/// `rouge-score`'s default tokenizer (no stemming): lower-case, non-`[a-z0-9]` runs separate.
pub fn rouge_tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence of two token lists.
pub fn lcs_length<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// ROUGE-L of a candidate against one reference: P = LCS/|candidate|, R = LCS/|reference|.
/// Empty inputs score 0, as in `rouge-score`.
pub fn rouge_l(candidate: &str, reference: &str) -> Prf {
    let c = rouge_tokenize(candidate);
    let r = rouge_tokenize(reference);
    if c.is_empty() || r.is_empty() {
        return Prf::default();
    }
    let lcs = lcs_length(&c, &r) as f64;
    Prf::from_pr(lcs / c.len() as f64, lcs / r.len() as f64)
}

/// Mean ROUGE-L F1 over candidate/reference pairs (0 for an empty list).
pub fn mean_rouge_l(candidates: &[&str], references: &[&str]) -> Result<f64, MetricError> {
    check_lengths("ROUGE-L pairs", candidates.len(), references.len())?;
    Ok(mean(
        candidates
            .iter()
            .zip(references)
            .map(|(c, r)| rouge_l(c, r).f1),
    ))
}

// ---------------------------------------------------------------------------------------------
// BLEU

/// How zero n-gram matches are treated.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Smoothing {
    /// nltk's default: a zero precision makes the score 0.
    None,
    /// nltk `method1`: add epsilon (nltk uses 0.1) to zero match counts.
    Epsilon(f64),
    /// nltk `method3` = sacrebleu `exp`: the k-th zero precision becomes 1 / (2^k * total).
    Exp,
}

/// BLEU-1..4 and their ingredients.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BleuScores {
    /// `bleu[n-1]` is cumulative BLEU-n (uniform weights over orders 1..=n), in [0, 1].
    pub bleu: [f64; 4],
    /// Clipped match counts per order (1..=4).
    pub matches: [usize; 4],
    /// Candidate n-gram counts per order (1..=4).
    pub totals: [usize; 4],
    pub brevity_penalty: f64,
    pub candidate_length: usize,
    pub reference_length: usize,
}

/// Lower-cased words, with every punctuation mark a separate token.
pub fn bleu_tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for ch in text.to_lowercase().chars() {
        if ch.is_alphanumeric() {
            word.push(ch);
        } else {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if !ch.is_whitespace() {
                tokens.push(ch.to_string());
            }
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

fn ngram_counts<T: AsRef<str>>(tokens: &[T], n: usize) -> HashMap<Vec<&str>, usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for window in tokens.windows(n) {
            let key: Vec<&str> = window.iter().map(AsRef::as_ref).collect();
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

/// Corpus BLEU: each candidate has one or more references; counts are summed over the corpus
/// before the precisions and the brevity penalty are computed.
pub fn corpus_bleu<T: AsRef<str>>(
    candidates: &[Vec<T>],
    references: &[Vec<Vec<T>>],
    smoothing: Smoothing,
) -> Result<BleuScores, MetricError> {
    check_lengths(
        "BLEU candidates vs reference sets",
        candidates.len(),
        references.len(),
    )?;
    let mut matches = [0usize; 4];
    let mut totals = [0usize; 4];
    let (mut candidate_length, mut reference_length) = (0usize, 0usize);
    for (candidate, refs) in candidates.iter().zip(references) {
        candidate_length += candidate.len();
        // Closest reference length; ties go to the shorter reference (nltk).
        reference_length += refs
            .iter()
            .map(Vec::len)
            .min_by_key(|&len| (len.abs_diff(candidate.len()), len))
            .unwrap_or(0);
        for n in 1..=4 {
            let counts = ngram_counts(candidate, n);
            let mut max_ref: HashMap<Vec<&str>, usize> = HashMap::new();
            for reference in refs {
                for (gram, count) in ngram_counts(reference, n) {
                    let slot = max_ref.entry(gram).or_insert(0);
                    *slot = (*slot).max(count);
                }
            }
            matches[n - 1] += counts
                .iter()
                .map(|(gram, &count)| count.min(max_ref.get(gram).copied().unwrap_or(0)))
                .sum::<usize>();
            totals[n - 1] += candidate.len().saturating_sub(n - 1);
        }
    }
    let brevity_penalty = if candidate_length == 0 {
        0.0
    } else if candidate_length > reference_length {
        1.0
    } else {
        (1.0 - reference_length as f64 / candidate_length as f64).exp()
    };
    // nltk divides by max(1, total) so an empty order gives precision 0 rather than 0/0.
    let mut precisions = [0.0f64; 4];
    let mut zeros_seen = 0;
    for n in 0..4 {
        let total = totals[n].max(1) as f64;
        precisions[n] = if matches[n] > 0 {
            matches[n] as f64 / total
        } else {
            match smoothing {
                Smoothing::None => 0.0,
                Smoothing::Epsilon(eps) => eps / total,
                Smoothing::Exp => {
                    zeros_seen += 1;
                    1.0 / (2f64.powi(zeros_seen) * total)
                }
            }
        };
    }
    let mut bleu = [0.0f64; 4];
    if matches[0] > 0 {
        for order in 1..=4 {
            let used = &precisions[..order];
            bleu[order - 1] = if used.iter().any(|&p| p <= 0.0) {
                0.0
            } else {
                let log_mean = used.iter().map(|p| p.ln()).sum::<f64>() / order as f64;
                brevity_penalty * log_mean.exp()
            };
        }
    }
    Ok(BleuScores {
        bleu,
        matches,
        totals,
        brevity_penalty,
        candidate_length,
        reference_length,
    })
}

/// BLEU of one candidate against its references.
pub fn sentence_bleu<T: AsRef<str> + Clone>(
    candidate: &[T],
    references: &[Vec<T>],
    smoothing: Smoothing,
) -> BleuScores {
    corpus_bleu(&[candidate.to_vec()], &[references.to_vec()], smoothing)
        .expect("one candidate and one reference set always have equal lengths")
}

// ---------------------------------------------------------------------------------------------
// SQuAD token F1 / exact match

/// SQuAD normalisation: lower-case, remove ASCII punctuation, remove articles, collapse spaces.
pub fn squad_normalize(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD token-level F1. When either side normalises to nothing, 1 if both do, else 0.
pub fn token_f1(prediction: &str, gold: &str) -> Prf {
    let normalized_prediction = squad_normalize(prediction);
    let normalized_gold = squad_normalize(gold);
    let pred: Vec<&str> = normalized_prediction.split_whitespace().collect();
    let gold: Vec<&str> = normalized_gold.split_whitespace().collect();
    if pred.is_empty() || gold.is_empty() {
        let same = if pred == gold { 1.0 } else { 0.0 };
        return Prf {
            precision: same,
            recall: same,
            f1: same,
        };
    }
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for token in &gold {
        *gold_counts.entry(token).or_insert(0) += 1;
    }
    let mut common = 0usize;
    for token in &pred {
        if let Some(count) = gold_counts.get_mut(token)
            && *count > 0
        {
            *count -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return Prf::default();
    }
    Prf::from_pr(
        common as f64 / pred.len() as f64,
        common as f64 / gold.len() as f64,
    )
}

/// SQuAD exact match after normalisation.
pub fn exact_match(prediction: &str, gold: &str) -> bool {
    squad_normalize(prediction) == squad_normalize(gold)
}

// ---------------------------------------------------------------------------------------------
// BERTScore-style F1

/// Anything that maps a text to one vector per token (a biomedical BERT for F1-Bio, or the
/// built-in [`HashedTrigramEmbedder`] as a dependency-free lexical stand-in).
pub trait TokenEmbedder {
    type Error: std::fmt::Display;
    fn embed(&self, text: &str) -> Result<Vec<Vec<f32>>, Self::Error>;
}

fn cosine(a: &[f32], b: &[f32]) -> Result<f64, MetricError> {
    if a.len() != b.len() {
        return Err(MetricError::DimensionMismatch {
            left: a.len(),
            right: b.len(),
        });
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    Ok(if na > 0.0 && nb > 0.0 {
        dot / (na.sqrt() * nb.sqrt())
    } else {
        0.0
    })
}

/// BERTScore-style P/R/F1: each candidate token is matched to its most similar reference token
/// (precision = mean of those cosines) and vice versa (recall). Either side without tokens
/// scores 0.
pub fn bert_score<E: TokenEmbedder>(
    embedder: &E,
    candidate: &str,
    reference: &str,
) -> Result<Prf, MetricError> {
    let embed = |which: &'static str, text: &str| {
        embedder.embed(text).map_err(|e| MetricError::Embedder {
            which,
            message: e.to_string(),
        })
    };
    let c = embed("candidate", candidate)?;
    let r = embed("reference", reference)?;
    if c.is_empty() || r.is_empty() {
        return Ok(Prf::default());
    }
    let mut similarity = vec![vec![0.0f64; r.len()]; c.len()];
    for (i, cv) in c.iter().enumerate() {
        for (j, rv) in r.iter().enumerate() {
            similarity[i][j] = cosine(cv, rv)?;
        }
    }
    let precision = mean(
        similarity
            .iter()
            .map(|row| row.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
    );
    let recall = mean((0..r.len()).map(|j| {
        similarity
            .iter()
            .map(|row| row[j])
            .fold(f64::NEG_INFINITY, f64::max)
    }));
    Ok(Prf::from_pr(precision, recall))
}

/// A deterministic bag-of-character-trigrams embedding per word (hashed into `dim` buckets):
/// a lexical stand-in for a real encoder, so F1-Bio-style scores can be computed offline.
#[derive(Debug, Clone, Copy)]
pub struct HashedTrigramEmbedder {
    pub dim: usize,
}

impl TokenEmbedder for HashedTrigramEmbedder {
    type Error = std::convert::Infallible;

    fn embed(&self, text: &str) -> Result<Vec<Vec<f32>>, Self::Error> {
        let dim = self.dim.max(1);
        Ok(bleu_tokenize(text)
            .into_iter()
            .filter(|t| t.chars().any(char::is_alphanumeric))
            .map(|word| {
                let padded: Vec<char> = format!("#{word}#").chars().collect();
                let mut v = vec![0.0f32; dim];
                for tri in padded.windows(3) {
                    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                    for ch in tri {
                        hash ^= u64::from(*ch);
                        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                    }
                    v[(hash % dim as u64) as usize] += 1.0;
                }
                v
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Accuracy and option parsing

/// Fraction of `true` values (0 for none).
pub fn accuracy(correct: impl IntoIterator<Item = bool>) -> f64 {
    let (mut hits, mut total) = (0usize, 0usize);
    for c in correct {
        hits += usize::from(c);
        total += 1;
    }
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// One option of a multiple-choice question.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChoiceOption {
    pub letter: char,
    pub text: String,
}

/// Splits "... A: first; B: second; C: third" (the Heartcare closed-QA format) into options.
/// Letters must run A, B, C, ... in order, each followed by a colon and standing as a word of
/// its own. Returns an empty list when there is no "A:" marker.
pub fn parse_options(question: &str) -> Vec<ChoiceOption> {
    let chars: Vec<(usize, char)> = question.char_indices().collect();
    let find_marker = |letter: char, from: usize| -> Option<usize> {
        (from..chars.len().saturating_sub(1)).find(|&k| {
            chars[k].1 == letter
                && chars[k + 1].1 == ':'
                && (k == 0 || !chars[k - 1].1.is_alphanumeric())
        })
    };
    let mut markers = Vec::new();
    let mut from = 0;
    for letter in 'A'..='Z' {
        match find_marker(letter, from) {
            Some(k) => {
                markers.push((letter, k));
                from = k + 2;
            }
            None => break,
        }
    }
    let mut options = Vec::new();
    for (i, &(letter, k)) in markers.iter().enumerate() {
        let start = chars[k + 1].0 + 1;
        let end = markers
            .get(i + 1)
            .map_or(question.len(), |&(_, next)| chars[next].0);
        let text = question[start..end]
            .trim()
            .trim_end_matches([';', ',', '.', '?'])
            .trim();
        options.push(ChoiceOption {
            letter,
            text: text.to_string(),
        });
    }
    options
}

/// Renders options in the Heartcare format: "A: first; B: second".
pub fn format_options(options: &[ChoiceOption]) -> String {
    options
        .iter()
        .map(|o| format!("{}: {}", o.letter, o.text))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Lower-cased alphanumeric words, for matching option texts inside generations.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn contains_words(haystack: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The option letter a free generation chose, or `None` when it names none or is ambiguous.
///
/// In order: (1) the whole answer is a letter ("B", "(B)", "B."); (2) an explicit statement
/// ("answer is B", "Answer: (C)", "option D"), with the letter upper-case and not followed by
/// another letter; (3) a leading "B:", "B)", "B." or "(B)"; (4) the answer starts with exactly
/// one option's text ("Yes, both..."); (5) exactly one option's text occurs in the answer, after
/// dropping options whose text is part of another matched option's text.
pub fn parse_choice(generation: &str, options: &[ChoiceOption]) -> Option<char> {
    let is_option = |c: char| options.iter().any(|o| o.letter == c);
    let text = generation
        .trim()
        .trim_matches(|c: char| c == '*' || c == '"' || c == '\'' || c == '`')
        .trim();

    // (1) A bare letter.
    let bare = text
        .trim_end_matches(['.', ':', ')', ','])
        .trim_start_matches('(')
        .trim();
    let mut bare_chars = bare.chars();
    if let (Some(c), None) = (bare_chars.next(), bare_chars.next())
        && is_option(c)
    {
        return Some(c);
    }

    // (2) An explicit statement.
    // ASCII lower-casing keeps byte offsets valid for slicing `text`.
    let lower = text.to_ascii_lowercase();
    for keyword in ["answer is", "answer:", "answer", "option", "choice"] {
        let mut search_from = 0;
        while let Some(found) = lower[search_from..].find(keyword) {
            let after = search_from + found + keyword.len();
            let rest = &text[after..];
            let skipped = rest.trim_start_matches(|c: char| {
                c.is_whitespace() || matches!(c, ':' | '(' | '*' | '"' | '\'' | '[')
            });
            let mut rest_chars = skipped.chars();
            if let Some(c) = rest_chars.next()
                && is_option(c)
                && !rest_chars.next().is_some_and(char::is_alphanumeric)
            {
                return Some(c);
            }
            search_from = after;
        }
    }

    // (3) A leading letter with its punctuation.
    let mut lead = text.chars();
    match (lead.next(), lead.next(), lead.next()) {
        (Some(c), Some(':' | ')' | '.'), _) if is_option(c) => return Some(c),
        (Some('('), Some(c), Some(')')) if is_option(c) => return Some(c),
        _ => {}
    }

    // (4)/(5) Option texts.
    let generation_words = words(text);
    let option_words: Vec<(char, Vec<String>)> =
        options.iter().map(|o| (o.letter, words(&o.text))).collect();
    let starting: Vec<&(char, Vec<String>)> = option_words
        .iter()
        .filter(|(_, w)| !w.is_empty() && generation_words.starts_with(w))
        .collect();
    if let Some(longest) = starting.iter().max_by_key(|(_, w)| w.len()) {
        let ties = starting
            .iter()
            .filter(|(_, w)| w.len() == longest.1.len())
            .count();
        if ties == 1 {
            return Some(longest.0);
        }
    }
    let matched: Vec<&(char, Vec<String>)> = option_words
        .iter()
        .filter(|(_, w)| contains_words(&generation_words, w))
        .collect();
    let maximal: Vec<char> = matched
        .iter()
        .filter(|(letter, w)| {
            !matched
                .iter()
                .any(|(other, ow)| other != letter && ow.len() > w.len() && contains_words(ow, w))
        })
        .map(|(letter, _)| *letter)
        .collect();
    match maximal.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

/// Accuracy of generations on multiple-choice items: `(generation, correct letter, options)`.
pub fn choice_accuracy<'a>(
    items: impl IntoIterator<Item = (&'a str, char, &'a [ChoiceOption])>,
) -> f64 {
    accuracy(
        items.into_iter().map(|(generation, correct, options)| {
            parse_choice(generation, options) == Some(correct)
        }),
    )
}

fn check_lengths(what: &'static str, left: usize, right: usize) -> Result<(), MetricError> {
    if left == right {
        Ok(())
    } else {
        Err(MetricError::LengthMismatch { what, left, right })
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values {
        sum += v;
        n += 1;
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}
