//! TensorBoard's own reader (`EventAccumulator`, from `pip install tensorboard`) must read our
//! event files: scalars, the text plugin, and the resume mark that drops a killed attempt's
//! later steps.

use std::process::Command;

use beatlab::tracking::EventWriter;

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "text": {t: [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)] for t in tags["tensors"]},
}
print(json.dumps(out))
"#;

#[test]
fn tensorboard_reads_scalars_text_and_resume_marks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.text("spec", 0, "experiment = \"x\"").unwrap();
        for step in 1..=5 {
            w.scalar("beat/train/loss", step, 1.0 / step as f64)
                .unwrap();
        }
        // A resumed attempt continues after step 3: its first write is step 4, so TensorBoard
        // must drop the killed attempt's steps 4 and 5.
        w.session_start(4).unwrap();
        w.scalar("beat/train/loss", 4, 0.3).unwrap();
        w.flush().unwrap();
    }
    let out = Command::new("python3")
        .args(["-c", READER])
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "TensorBoard's reader failed (is it installed? `pip install tensorboard`, as .ci/run does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let loss: Vec<(i64, f64)> = v["scalars"]["beat/train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let steps: Vec<i64> = loss.iter().map(|p| p.0).collect();
    assert_eq!(
        steps,
        vec![1, 2, 3, 4],
        "steps after the resume mark replace the old ones"
    );
    assert!((loss[1].1 - 0.5).abs() < 1e-6);
    assert!((loss[3].1 - 0.3).abs() < 1e-6);
    assert_eq!(v["text"]["spec"][0], "experiment = \"x\"");
}
