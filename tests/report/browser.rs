//! Debian's Chromium, headless, on a `file://` page: the DOM it built, what it printed to the
//! console, what the page asked of the network (from Chromium's own net log), and screenshots.
//! `BEATLAB_TEST_CHROMIUM` names the browser (scripts/test.d/40-chromium.sh sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What loading a page gave.
pub struct Load {
    /// The DOM after loading, serialised by the browser (`--dump-dom`).
    pub dom: String,
    /// Console messages of the page (errors, warnings, logs and uncaught exceptions).
    pub console: Vec<String>,
    /// URLs the page requested over the network.
    pub requests: Vec<String>,
}

/// The browser to test with; `None` (the test skips, saying why) when `BEATLAB_TEST_CHROMIUM`
/// is unset outside the test setup. Under it (`CI` or `BEATLAB_TEST_SETUP`) a missing browser
/// fails the test.
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BEATLAB_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let required = ["BEATLAB_TEST_SETUP", "CI"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    assert!(
        !required,
        "BEATLAB_TEST_CHROMIUM is unset under the test setup (scripts/test.d/40-chromium.sh sets it)"
    );
    eprintln!(
        "skipped: BEATLAB_TEST_CHROMIUM is unset (scripts/test.sh installs Debian's chromium and sets it)"
    );
    None
}

/// Runs the browser headless on `page` with `args`, its profile in `dir`, at most two minutes.
fn run(browser: &Path, dir: &Path, page: &Path, args: &[String]) -> Output {
    let out = Command::new("timeout")
        .arg("120")
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Loads `page` and reports its DOM, console messages and network requests.
pub fn load(browser: &Path, dir: &Path, page: &Path) -> Load {
    let net_log = dir.join("net-log.json");
    let out = run(
        browser,
        dir,
        page,
        &[
            "--enable-logging=stderr".into(),
            "--v=0".into(),
            format!("--log-net-log={}", net_log.display()),
            "--dump-dom".into(),
        ],
    );
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Load {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        console,
        requests: page_requests(&net_log),
    }
}

/// The URLs of requests made on behalf of a `file://` page (the browser's own background
/// requests have another network isolation key).
fn page_requests(net_log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(net_log).expect("chromium wrote its net log");
    let log: serde_json::Value = serde_json::from_str(&text).expect("a complete net log");
    let start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_i64()
        .expect("the net log names its event types");
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_i64() == Some(start))
        .map(|e| &e["params"])
        .filter(|p| {
            p["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("file://"))
        })
        .filter_map(|p| p["url"].as_str().map(str::to_string))
        .collect()
}

/// A `width` x `height` screenshot of `page`, decoded to RGBA.
pub fn screenshot(browser: &Path, dir: &Path, page: &Path, (width, height): (u32, u32)) -> Shot {
    let file = dir.join("screenshot.png");
    run(
        browser,
        dir,
        page,
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size={width},{height}"),
        ],
    );
    let mut decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&file).expect("chromium wrote the screenshot"),
    ));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Shot {
        width: info.width,
        height: info.height,
        pixels,
        file,
    }
}

/// A decoded screenshot.
pub struct Shot {
    pub width: u32,
    pub height: u32,
    /// RGB, row by row.
    pub pixels: Vec<[u8; 3]>,
    pub file: PathBuf,
}

impl Shot {
    /// The share of pixels that are not (near) white.
    pub fn inked(&self) -> f64 {
        let n = self
            .pixels
            .iter()
            .filter(|p| p.iter().any(|&c| c < 235))
            .count();
        n as f64 / self.pixels.len() as f64
    }

    /// How many pixels are within `tol` of `rgb` on every channel.
    pub fn near(&self, rgb: [u8; 3], tol: u8) -> usize {
        self.pixels
            .iter()
            .filter(|p| p.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= tol))
            .count()
    }
}
