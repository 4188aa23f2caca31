//! One shape for every benchmark's report, so that the README's table can be refreshed by copying.
//!
//! Every benchmark is one command (`plugins/<crate>/bench/run.sh`, `pipelines/<job>/bench/run.sh`)
//! that runs ours and the tools a user would pick instead side by side in one run, then prints:
//!
//! ```text
//! == shmringsink -> shmringsrc: 1920x1080 BGRx, 600 frames ==
//! machine: 2 cores, AMD EPYC 7B13, Linux 6.1.0-57-amd64, GStreamer 1.22.0
//! rounds: 3 (medians)
//! | metric | shmring | shmsink->shmsrc | memcpy | shmring / shmsink->shmsrc | shmring / memcpy |
//! | --- | --- | --- | --- | --- | --- |
//! | frames/s | 1612 | 1056 | 1911 | 1.53 | 0.84 |
//! ```
//!
//! The first value column is always ours; a ratio column per other column divides ours by it.
//! Rust benchmarks use [`Report`]; Python ones `scripts/bench_report.py`, which prints the same.

use std::fmt::Write as _;

/// The median of `v` (sorted in place); NaN for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p` quantile (0..=1, nearest rank) of `v` (sorted in place); NaN for an empty slice.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Time on a CPU (ns) of the thread whose `/proc/…/task/TID` directory is `task`, from its
/// `schedstat`; 0 if unknown.
pub fn schedstat_ns(task: &std::path::Path) -> u64 {
    std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) process `pid` used so far: the sum of its live threads' `schedstat` (ns on a
/// CPU; `/proc/PID/stat` counts 10 ms ticks, too coarse for a few ms per run). Threads that
/// already ended are missing: right for the daemons and servers benchmarks measure (their
/// threads live as long as they do); for this process use [`self_cpu_ns`]. 0 if unknown.
pub fn pid_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten().map(|task| schedstat_ns(&task.path())).sum()
}

/// CPU time (user + system, ns, µs resolution) of this process so far, threads that already
/// ended included (`getrusage`).
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Cores, CPU model, kernel and GStreamer version: the machine line every report starts with.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let (maj, min, mic, _) = gst::version();
    format!("{cores} cores, {model}, Linux {kernel}, GStreamer {maj}.{min}.{mic}")
}

/// A benchmark's result table: one row per metric, ours first, then each reference.
#[derive(Debug, Clone)]
pub struct Report {
    title: String,
    rounds: usize,
    columns: Vec<String>,
    rows: Vec<(String, Vec<Option<f64>>)>,
    notes: Vec<String>,
}

impl Report {
    /// `columns[0]` names ours, the rest the references, in the order rows give their values.
    pub fn new(title: impl Into<String>, rounds: usize, columns: &[&str]) -> Self {
        assert!(!columns.is_empty(), "a report needs at least our column");
        Report {
            title: title.into(),
            rounds,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A metric (name with its unit, e.g. "CPU per frame (ms)") and one median per column;
    /// `None` where a column has no value for it.
    pub fn row(&mut self, metric: impl Into<String>, values: &[Option<f64>]) -> &mut Self {
        assert_eq!(
            values.len(),
            self.columns.len(),
            "one value per column in a report row"
        );
        self.rows.push((metric.into(), values.to_vec()));
        self
    }

    /// A line printed under the table (what the figures mean, what was left out).
    pub fn note(&mut self, text: impl Into<String>) -> &mut Self {
        self.notes.push(text.into());
        self
    }

    /// The report as text: title, machine, rounds, the Markdown table, notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {} ==", self.title);
        let _ = writeln!(out, "machine: {}", machine());
        let _ = writeln!(out, "rounds: {} (medians)", self.rounds);
        let ours = &self.columns[0];
        let mut header: Vec<String> = vec!["metric".into()];
        header.extend(self.columns.iter().cloned());
        header.extend(self.columns[1..].iter().map(|c| format!("{ours} / {c}")));
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
        for (metric, values) in &self.rows {
            let mut cells = vec![metric.clone()];
            cells.extend(values.iter().map(|v| fmt_value(*v)));
            for reference in &values[1..] {
                cells.push(match (values[0], reference) {
                    (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                });
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// Prints [`Report::render`] to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if !x.is_finite() => "-".into(),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn report_has_ratio_columns_per_reference() {
        gst::init().unwrap();
        let mut r = Report::new("x", 3, &["ours", "a", "b"]);
        r.row("frames/s", &[Some(150.0), Some(100.0), None]);
        let text = r.render();
        assert!(
            text.contains("| metric | ours | a | b | ours / a | ours / b |"),
            "{text}"
        );
        assert!(
            text.contains("| frames/s | 150 | 100 | - | 1.50 | - |"),
            "{text}"
        );
        assert!(text.contains("rounds: 3 (medians)"), "{text}");
        assert!(
            text.lines().nth(1).unwrap().starts_with("machine: "),
            "{text}"
        );
    }
}
