//! The `eval` stage: Heartcare-Bench metrics on the test split, per task, dimension and
//! modality, into the registry; every generation is kept in `generations-<stage>.jsonl` so a
//! judge model can score it later.
//!
//! - closed-QA and comparison-QA: accuracy by option likelihood (mean log-probability per
//!   answer token) and by parsing the option out of a free generation (`eval.choice_scoring`);
//! - open-QA: ROUGE-L F1 and SQuAD-style token F1 of greedy generations;
//! - reports: ROUGE-L F1 and corpus BLEU-1..4 (nltk conventions, sacrebleu's `exp` smoothing);
//! - open-QA and reports, when `eval.bertscore_encoder` names a BERT encoder: BERTScore
//!   (`bertscore_f1`, `bertscore_precision`, `bertscore_recall`; the paper's F1-Bio with a
//!   biomedical BERT), the encoder loaded once per stage before anything is evaluated;
//! - signal prediction: whether the model emits `<prediction>`, and the MSE of Beat's prediction
//!   head on the test windows (the waveform itself comes from Beat, paper §1.2);
//! - the peer systems' tasks (grounded, localization, multi-ECG): see [`super::peers`].

use std::collections::BTreeMap;
use std::time::Instant;

use beatlab_heartcare::instruct::{Dimension, Item, Modality, Split, Task};
use beatlab_heartcare::metrics::{self, Smoothing};
use beatlab_lm::bert::{BertScore, BertScorer};
use beatlab_lm::tokenizer::Special;
use beatlab_mm::{EcgInput, Example, HeartcareModel};
use beatlab_nn::beat::Mode;
use candle_core::{DType, Tensor};

use super::peers::{self, PeerTruth};
use super::run_data::RunData;
use super::train::INSTRUCTION_TASKS;
use super::{Corpus, Inputs, build_model, restore_earlier};
use crate::runner::{Stage, StageContext, StageError, StageOutcome};
use crate::spec::{ChoiceScoring, Spec, StageKind, StageSpec};
use crate::stages::catalog::{StageDeclaration, strings};
use toml::Value;

/// The `eval` kind: Heartcare-Bench metrics on the test split of the instruction tasks.
pub const DECLARATION: StageDeclaration = StageDeclaration {
    kind: StageKind::Eval,
    defaults: || {
        vec![
            ("epochs", Value::Integer(0)),
            ("tasks", strings(&INSTRUCTION_TASKS.map(Task::name))),
        ]
    },
    summaries: summary_keys,
    create: |_, _| Ok(Box::new(EvalStage)),
};

/// The per-item metrics of a task, each recorded as `<task>/<metric>`, and per question
/// dimension and per input modality group with a `_<dimension>` or `_<group>` suffix.
fn item_metrics(task: Task) -> &'static [&'static str] {
    const BERTSCORE: [&str; 3] = ["bertscore_f1", "bertscore_precision", "bertscore_recall"];
    match task {
        Task::ClosedQa | Task::ComparisonQa => &["acc", "acc_generated"],
        Task::OpenQa => &[
            "rouge_l",
            "token_f1",
            BERTSCORE[0],
            BERTSCORE[1],
            BERTSCORE[2],
        ],
        Task::ReportGeneration => &["rouge_l", BERTSCORE[0], BERTSCORE[1], BERTSCORE[2]],
        Task::SignalPrediction => &["token_acc"],
        Task::Caption => &[],
        Task::Grounded | Task::Localization | Task::MultiEcg => {
            peers::item_metrics(task).unwrap_or_default()
        }
    }
}

/// The modality groups of [`modality_group`].
const MODALITY_GROUPS: [&str; 3] = ["signal", "image", "cross"];

/// Every summary key the stage can record for the stage's tasks.
fn summary_keys(_: &Spec, stage: &StageSpec) -> Vec<String> {
    let mut suffixes = vec![String::new()];
    suffixes.extend(
        Dimension::ALL
            .iter()
            .map(|d| format!("_{}", dimension_key(*d))),
    );
    suffixes.extend(MODALITY_GROUPS.iter().map(|g| format!("_{g}")));
    let mut keys: Vec<String> = stage
        .tasks
        .iter()
        .flat_map(|&task| {
            let suffixes = &suffixes;
            item_metrics(task).iter().flat_map(move |metric| {
                suffixes
                    .iter()
                    .map(move |sfx| format!("{}/{metric}{sfx}", task.name()))
            })
        })
        .collect();
    if stage.tasks.contains(&Task::ReportGeneration) {
        keys.extend((1..=4).map(|n| format!("report/bleu{n}")));
    }
    if stage.tasks.contains(&Task::SignalPrediction) {
        keys.push("prediction/mse".into());
    }
    if stage.tasks.contains(&Task::Localization) {
        keys.push("localization/iou_micro".into());
    }
    keys.extend(["accuracy", "items"].map(String::from));
    keys
}

/// The `eval` stage.
pub struct EvalStage;

/// Running means of named metrics.
#[derive(Default)]
struct Means(BTreeMap<String, (f64, usize)>);

impl Means {
    fn add(&mut self, key: String, value: f64) {
        let e = self.0.entry(key).or_default();
        e.0 += value;
        e.1 += 1;
    }

    fn entries(&self) -> Vec<(String, f64)> {
        self.0
            .iter()
            .map(|(k, (sum, n))| (k.clone(), sum / *n as f64))
            .collect()
    }
}

/// `signal`, `image`, or `cross` (both kinds of input in one item).
fn modality_group(item: &Item) -> &'static str {
    let signal = item.label.contains(&Modality::Signal);
    let image = item.label.contains(&Modality::Image);
    match (signal, image) {
        (true, false) => "signal",
        (false, true) => "image",
        _ => "cross",
    }
}

fn dimension_name(item: &Item) -> Option<String> {
    item.dimension().map(dimension_key)
}

/// A dimension as metric keys spell it (`diagnosis`, `waveform`, `rhythm`, `misc`).
fn dimension_key(d: Dimension) -> String {
    format!("{d:?}").to_lowercase()
}

/// One line of the generations file.
#[derive(serde::Serialize)]
struct Record<'a> {
    id: Option<&'a str>,
    #[serde(rename = "type")]
    item_type: &'a str,
    dimension: Option<String>,
    label: &'a [Modality],
    filename: &'a [String],
    question: &'a str,
    reference: &'a str,
    generation: Option<String>,
    /// BERTScore F1 of the generation, when an encoder is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    bertscore_f1: Option<f64>,
    option_scores: Vec<f64>,
    chosen_by_likelihood: Option<char>,
    chosen_by_generation: Option<char>,
    correct: Option<char>,
}

impl Stage for EvalStage {
    fn run(&mut self, ctx: &mut StageContext<'_>) -> Result<StageOutcome, StageError> {
        let spec = ctx.spec;
        let started = Instant::now();
        // A bad encoder fails the stage before any data or model is built.
        let bertscore = load_bertscore(spec, ctx.device)?;
        if let Some(scorer) = &bertscore {
            log_encoder(ctx, scorer);
        }
        let data = RunData::of_run(ctx)?;
        let corpus = &data.corpus;
        let mut model = build_model(spec, data.tokenizer(), ctx.device, &[])?;
        restore_earlier(ctx, &data, &mut model)?;
        let items = test_items(corpus, &ctx.stage.tasks, spec.eval.max_items as usize)?;
        let inputs = Inputs::prepare(spec, corpus, &model, &items, ctx.device)?;
        ctx.log(&format!(
            "{} test items ({}); inputs ready in {:.1} s",
            items.len(),
            super::task_list(&ctx.stage.tasks),
            started.elapsed().as_secs_f64()
        ));

        let mut scored = Scored {
            peers: PeerTruth::new(spec, &corpus.records, &items),
            ..Scored::default()
        };
        let batch = ctx.stage.batch as usize;
        let bar = ctx.bar(items.len() as u64, "items");
        for chunk in items.chunks(batch.max(1)) {
            if let Some(reason) = ctx.stop_requested() {
                bar.abandon();
                return Ok(StageOutcome::Stopped(reason));
            }
            let chunk_inputs: Vec<Vec<EcgInput>> = chunk
                .iter()
                .map(|i| inputs.of(i))
                .collect::<Result<_, _>>()?;
            scored.add_chunk(spec, &model, bertscore.as_ref(), chunk, &chunk_inputs)?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();

        let prediction_mse = prediction_mse(&model, corpus, &items, ctx.device)?;
        let summary = scored.summary(prediction_mse)?;
        let refs: Vec<(&str, f64)> = summary.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        ctx.summaries(&refs)?;
        let path = ctx
            .run_dir
            .join(format!("generations-{}.jsonl", ctx.stage.name));
        write_generations(&path, &scored.lines)?;
        ctx.finish(0, 0, &BTreeMap::new(), &{
            let mut meta = data.checkpoint_meta();
            meta.insert("summary".into(), serde_json::json!(summary));
            meta.into()
        })?;
        ctx.log(&format!(
            "{}; {} items in {:.1} s; generations in {}",
            headline(&summary, bertscore.is_some()),
            items.len(),
            started.elapsed().as_secs_f64(),
            path.display()
        ));
        Ok(StageOutcome::Completed)
    }
}

fn log_encoder(ctx: &mut StageContext<'_>, scorer: &BertScorer) {
    ctx.log(&format!(
        "BERTScore encoder from {} ({} layers, hidden {})",
        scorer.files().config.parent().map_or_else(
            || ctx.spec.eval.bertscore_encoder.clone(),
            |d| d.display().to_string()
        ),
        scorer.config().num_hidden_layers,
        scorer.config().hidden_size
    ));
}

/// The test split's items of `tasks`, at most `cap` per task when `cap` is not 0.
fn test_items(corpus: &Corpus, tasks: &[Task], cap: usize) -> Result<Vec<Item>, StageError> {
    let mut items = corpus.select(Split::Test, tasks);
    if cap > 0 {
        let mut per_task: BTreeMap<&'static str, usize> = BTreeMap::new();
        items.retain(|i| {
            let n = per_task
                .entry(i.task().map_or("other", Task::name))
                .or_default();
            *n += 1;
            *n <= cap
        });
    }
    if items.is_empty() {
        return Err(StageError::Data(
            "no test items for the evaluated tasks".into(),
        ));
    }
    Ok(items)
}

/// What the scored items add up to: metric means, the generations file's lines, and the
/// (generation, reference) pairs of the reports for corpus BLEU.
#[derive(Default)]
struct Scored<'a> {
    means: Means,
    lines: Vec<Record<'a>>,
    report_pairs: Vec<(String, String)>,
    /// The truths of the peer tasks' items.
    peers: PeerTruth,
}

impl<'a> Scored<'a> {
    /// Generates where the item needs it (free answers; choices unless scored by likelihood
    /// alone), BERTScores the generations and scores every item of the chunk.
    fn add_chunk(
        &mut self,
        spec: &Spec,
        model: &HeartcareModel,
        bertscore: Option<&BertScorer>,
        chunk: &'a [Item],
        inputs: &[Vec<EcgInput>],
    ) -> Result<(), StageError> {
        let scoring = spec.eval.choice_scoring;
        let needs_generation = |item: &Item| {
            let choice = !item.choice_options().is_empty();
            !choice || scoring != ChoiceScoring::Likelihood
        };
        let gen_idx: Vec<usize> = (0..chunk.len())
            .filter(|&i| needs_generation(&chunk[i]))
            .collect();
        let examples: Vec<Example> = gen_idx
            .iter()
            .map(|&i| Example::new(&chunk[i], &inputs[i]))
            .collect();
        let mut generations: Vec<Option<beatlab_mm::Generation>> = vec![None; chunk.len()];
        if !examples.is_empty() {
            let out = model.generate_batch(&examples, spec.eval.max_new_tokens as usize)?;
            for (&i, g) in gen_idx.iter().zip(out) {
                generations[i] = Some(g);
            }
        }
        let bert_scores = match bertscore {
            Some(scorer) => score_generations(scorer, chunk, &generations)?,
            None => vec![None; chunk.len()],
        };
        let prediction_id = model.tokenizer().special_id(Special::Prediction);
        for (k, item) in chunk.iter().enumerate() {
            let line = score_item(
                model,
                item,
                &inputs[k],
                generations[k].take(),
                bert_scores[k],
                scoring,
                prediction_id,
                &mut self.means,
                &mut self.report_pairs,
                &mut self.peers,
            )?;
            self.lines.push(line);
        }
        Ok(())
    }

    /// The stage's summaries: the means, the prediction head's MSE, the reports' corpus
    /// BLEU-1..4, the accuracy over every multiple-choice item and the item count.
    fn summary(&self, prediction_mse: Option<f64>) -> Result<Vec<(String, f64)>, StageError> {
        let mut summary = self.means.entries();
        if let Some(mse) = prediction_mse {
            summary.push(("prediction/mse".into(), mse));
        }
        summary.extend(self.peers.summary());
        summary.sort_by(|a, b| a.0.cmp(&b.0));
        if !self.report_pairs.is_empty() {
            let cands: Vec<Vec<String>> = self
                .report_pairs
                .iter()
                .map(|(g, _)| metrics::bleu_tokenize(g))
                .collect();
            let refs: Vec<Vec<Vec<String>>> = self
                .report_pairs
                .iter()
                .map(|(_, r)| vec![metrics::bleu_tokenize(r)])
                .collect();
            let bleu = metrics::corpus_bleu(&cands, &refs, Smoothing::Exp)?;
            for (n, b) in bleu.bleu.iter().enumerate() {
                summary.push((format!("report/bleu{}", n + 1), *b));
            }
        }
        // The headline number of the ablations: accuracy over every multiple-choice item.
        let choice: Vec<f64> = self
            .lines
            .iter()
            .filter_map(|l| {
                l.correct.map(|c| {
                    f64::from(u8::from(
                        l.chosen_by_likelihood.or(l.chosen_by_generation) == Some(c),
                    ))
                })
            })
            .collect();
        if !choice.is_empty() {
            summary.push((
                "accuracy".into(),
                choice.iter().sum::<f64>() / choice.len() as f64,
            ));
        }
        summary.push(("items".into(), self.lines.len() as f64));
        Ok(summary)
    }
}

/// Writes the generations file, one JSON object per item.
fn write_generations(path: &std::path::Path, lines: &[Record<'_>]) -> Result<(), StageError> {
    let mut jsonl = String::new();
    for l in lines {
        jsonl.push_str(&serde_json::to_string(l)?);
        jsonl.push('\n');
    }
    beatlab_fsio::write_atomically(path, jsonl.as_bytes()).map_err(|source| StageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The log line's headline metrics.
fn headline(summary: &[(String, f64)], bertscore: bool) -> String {
    let show = |k: &str| {
        summary
            .iter()
            .find(|(key, _)| key == k)
            .map_or("—".into(), |(_, v)| format!("{v:.3}"))
    };
    let bert = if bertscore {
        format!(
            ", open BERTScore F1 {}, report BERTScore F1 {}",
            show("open_qa/bertscore_f1"),
            show("report/bertscore_f1")
        )
    } else {
        String::new()
    };
    format!(
        "accuracy {} (closed {}, comparison {}), open ROUGE-L {}, report ROUGE-L {}{bert}",
        show("accuracy"),
        show("closed_qa/acc"),
        show("comparison_qa/acc"),
        show("open_qa/rouge_l"),
        show("report/rouge_l"),
    )
}

/// The BERTScore encoder `eval.bertscore_encoder` names (a folder, else a Hugging Face id in
/// the local cache), on the run's device; `None` when the field is empty. A missing or
/// unreadable encoder fails the stage with the field and what is missing (the commands check
/// for missing files before any run, `missing_weights`, and report them as bad input).
fn load_bertscore(
    spec: &crate::spec::Spec,
    device: &candle_core::Device,
) -> Result<Option<BertScorer>, StageError> {
    let name = spec.eval.bertscore_encoder.trim();
    if name.is_empty() {
        return Ok(None);
    }
    let source = super::model_source(name)?;
    BertScorer::load(&source, None, device)
        .map(Some)
        .map_err(|source| StageError::BertScore {
            name: name.to_string(),
            source: Box::new(source),
        })
}

/// Whether an item's generation is scored with BERTScore (open-QA answers and reports).
fn bertscored(item: &Item) -> bool {
    item.choice_options().is_empty()
        && matches!(item.task(), Some(Task::OpenQa | Task::ReportGeneration))
}

/// BERTScore of the chunk's open-QA and report generations against their references, in one
/// batched pass of the encoder; `None` for the other items.
fn score_generations(
    scorer: &BertScorer,
    chunk: &[Item],
    generations: &[Option<beatlab_mm::Generation>],
) -> Result<Vec<Option<BertScore>>, StageError> {
    let scored: Vec<usize> = (0..chunk.len())
        .filter(|&k| bertscored(&chunk[k]) && generations[k].is_some())
        .collect();
    let mut out = vec![None; chunk.len()];
    if scored.is_empty() {
        return Ok(out);
    }
    let pairs: Vec<(&str, &str)> = scored
        .iter()
        .filter_map(|&k| {
            let g = generations[k].as_ref()?;
            Some((g.text.as_str(), chunk[k].answer.as_str()))
        })
        .collect();
    let scores = scorer.score_batch(&pairs)?;
    for (&k, score) in scored.iter().zip(scores) {
        out[k] = Some(score);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn score_item<'a>(
    model: &HeartcareModel,
    item: &'a Item,
    inputs: &[EcgInput],
    generation: Option<beatlab_mm::Generation>,
    bert: Option<BertScore>,
    scoring: ChoiceScoring,
    prediction_id: u32,
    means: &mut Means,
    reports: &mut Vec<(String, String)>,
    peer_truth: &mut PeerTruth,
) -> Result<Record<'a>, StageError> {
    let task = item.task();
    let name = task.map_or("other", Task::name);
    let dim = dimension_name(item);
    let group = modality_group(item);
    let options = item.choice_options();
    let correct = item.correct_letter();
    let mut line = Record {
        id: item.id.as_deref(),
        item_type: item.item_type.as_str(),
        dimension: dim.clone(),
        label: &item.label,
        filename: &item.filename,
        question: &item.question,
        reference: &item.answer,
        generation: generation.as_ref().map(|g| g.text.clone()),
        bertscore_f1: bert.map(|b| b.f1),
        option_scores: Vec::new(),
        chosen_by_likelihood: None,
        chosen_by_generation: None,
        correct,
    };
    let mut record = |metric: &str, value: f64| {
        means.add(format!("{name}/{metric}"), value);
        if let Some(dim) = &dim {
            means.add(format!("{name}/{metric}_{dim}"), value);
        }
        means.add(format!("{name}/{metric}_{group}"), value);
    };
    if !options.is_empty() && correct.is_some() {
        if scoring != ChoiceScoring::Generate {
            let texts: Vec<String> = options
                .iter()
                .map(|o| format!("{}: {}", o.letter, o.text))
                .collect();
            let scores = model.score_options(item, inputs, &texts)?;
            let best = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| options[i].letter);
            line.option_scores = scores;
            line.chosen_by_likelihood = best;
            record("acc", f64::from(u8::from(best == correct)));
        }
        if let Some(g) = &generation {
            let chosen = metrics::parse_choice(&g.text, &options);
            line.chosen_by_generation = chosen;
            record("acc_generated", f64::from(u8::from(chosen == correct)));
        }
        return Ok(line);
    }
    let Some(g) = generation else {
        return Ok(line);
    };
    // Set only for open-QA and report items (see `bertscored`).
    if let Some(b) = bert {
        record("bertscore_f1", b.f1);
        record("bertscore_precision", b.precision);
        record("bertscore_recall", b.recall);
    }
    match task {
        Some(Task::OpenQa) => {
            record("rouge_l", metrics::rouge_l(&g.text, &item.answer).f1);
            record("token_f1", metrics::token_f1(&g.text, &item.answer).f1);
        }
        Some(Task::ReportGeneration) => {
            record("rouge_l", metrics::rouge_l(&g.text, &item.answer).f1);
            reports.push((g.text.clone(), item.answer.clone()));
        }
        Some(Task::SignalPrediction) => {
            record(
                "token_acc",
                f64::from(u8::from(g.ids.contains(&prediction_id))),
            );
        }
        Some(Task::Grounded | Task::Localization) => {
            for (metric, value) in peer_truth.score(item, &g.text) {
                record(metric, value);
            }
        }
        _ => {}
    }
    Ok(line)
}

/// Mean squared error of Beat's prediction head over the test windows of the prediction items'
/// records (normalised units, as Beat was trained).
fn prediction_mse(
    model: &HeartcareModel,
    corpus: &Corpus,
    items: &[Item],
    device: &candle_core::Device,
) -> Result<Option<f64>, StageError> {
    let Some(beat) = model.beat() else {
        return Ok(None);
    };
    let wanted: std::collections::BTreeSet<&str> = items
        .iter()
        .filter(|i| i.task() == Some(Task::SignalPrediction))
        .flat_map(|i| i.filename.iter().map(String::as_str))
        .collect();
    let ds = &corpus.dataset;
    let test = &ds.test;
    let indices: Vec<usize> = (0..test.len())
        .filter(|&i| wanted.contains(ds.records[test.record_index[i] as usize].id.as_str()))
        .collect();
    if indices.is_empty() {
        return Ok(None);
    }
    let len = ds.window_len();
    let (mut total, mut n) = (0.0, 0usize);
    for chunk in indices.chunks(32) {
        let mut data = Vec::with_capacity(chunk.len() * 12 * len);
        for &i in chunk {
            data.extend_from_slice(test.window(i, len));
        }
        let x = Tensor::from_vec(data, (chunk.len(), 12, len), device)?;
        let out = beat.forward(&x, Mode::Eval)?;
        total +=
            f64::from(out.pred_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?) * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(Some(total / n as f64))
}
