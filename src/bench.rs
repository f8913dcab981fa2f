//! Benchmarks behind `mriloop bench`: each prints `bench: NAME = VALUE UNIT` lines, with the
//! reference figure the issue names measured in the same run where it can be.

use crate::phantom;
use crate::volume::{read_volume, write_volume, Volume, VolumeError};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// One benchmark figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Name, e.g. `nifti_load_ms_256`.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit, e.g. `ms`.
    pub unit: String,
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bench: {} = {:.2} {}", self.name, self.value, self.unit)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Open-time benchmark on `path`: a `size`³ f32 phantom T1 is written there first unless the
/// file exists. Times `read_volume` (median of `repeats`) and, where `python3` with nibabel is
/// present, `nib.load(path).get_fdata()` on the same file in the same run.
/// Returns the figures and, when nibabel was not found, why.
pub fn io(
    path: &Path,
    size: usize,
    repeats: usize,
) -> Result<(Vec<Figure>, Option<String>), VolumeError> {
    let repeats = repeats.max(1);
    if !path.exists() {
        let vol: Volume<f32> = phantom::benchmark_t1(size, 7)?;
        write_volume(path, &vol)?;
    }
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let v = read_volume(path)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(v);
    }
    let mut figures = vec![Figure {
        name: format!("nifti_load_ms_{size}"),
        value: median(times),
        unit: "ms".into(),
    }];
    let script = format!(
        "import sys,time\nimport nibabel as nib\nts=[]\nfor _ in range({repeats}):\n    t=time.perf_counter(); d=nib.load(sys.argv[1]).get_fdata(); ts.append((time.perf_counter()-t)*1e3)\nts.sort(); print(ts[len(ts)//2])\n"
    );
    let note = match Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(path)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            match text.trim().parse::<f64>() {
                Ok(ms) => {
                    figures.push(Figure {
                        name: format!("nibabel_load_ms_{size}"),
                        value: ms,
                        unit: "ms".into(),
                    });
                    None
                }
                Err(_) => Some(format!("nibabel printed {text:?}")),
            }
        }
        Ok(out) => Some(format!(
            "python3 with nibabel not usable: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Some(format!("python3 not found: {e}")),
    };
    Ok((figures, note))
}
