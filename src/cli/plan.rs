//! `mriloop plan PROJECT`: the dataset fingerprint of a project and the training plan its
//! numbers imply for the device it would train on (`crate::model::plan`), printed and written to
//! `PROJECT/plan.json`.
//!
//! Invariants: reads every case once; writes only `plan.json`, atomically.

use crate::model::fingerprint::Fingerprint;
use crate::model::plan::{plan, Plan};
use crate::project::Project;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Arguments of `mriloop plan`.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The project folder.
    pub project: PathBuf,
    /// Plan for `cpu`, `gpu` or `auto` (the device `train --backend auto` would use).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Print the fingerprint and plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// The plan of a run that starts a promptable network (`train --promptable`: rule 12's
    /// steps).
    #[arg(long)]
    pub promptable: bool,
}

/// The fingerprint and plan written as `plan.json`.
#[derive(serde::Serialize)]
struct PlanFile<'a> {
    fingerprint: &'a Fingerprint,
    plan: &'a Plan,
}

/// `mriloop plan`.
pub fn run(args: PlanArgs) -> Result<()> {
    let project = Project::open(&args.project)?;
    let fp = Fingerprint::of(&project)?;
    let device = crate::model::apply::device_class(&args.backend);
    let p = match args.promptable {
        true => plan(&fp, device).for_prompting(),
        false => plan(&fp, device),
    };
    let json = plan_json(&fp, &p)?;
    let out = project.root().join("plan.json");
    crate::atomic::write_atomic(&out, json.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    if args.json {
        return super::emit(&json);
    }
    super::emit(&(describe(&fp, &p) + &format!("written: {}\n", out.display())))
}

/// The fingerprint and plan as the JSON of `plan.json`.
pub fn plan_json(fp: &Fingerprint, plan: &Plan) -> Result<String> {
    Ok(serde_json::to_string_pretty(&PlanFile {
        fingerprint: fp,
        plan,
    })? + "\n")
}

/// The fingerprint's gist and the plan, in lines.
pub fn describe(fp: &Fingerprint, p: &Plan) -> String {
    let mut t = format!(
        "dataset: {} cases ({:?}), {} with a reference mask; median spacing {:.3?} mm, size {:.0?} mm\n",
        fp.cases.len(),
        fp.form,
        fp.cases_with_mask,
        fp.median_spacing_mm(),
        fp.median_size_mm()
    );
    for l in &fp.labels {
        t += &format!(
            "  label {} {}: in {} cases, median {:.1} mm³ (smallest {:.1})\n",
            l.value, l.name, l.cases, l.median_volume_mm3, l.min_volume_mm3
        );
    }
    let classes: Vec<String> = fp.classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let no_class = fp.classes.iter().all(|(_, n)| *n == 0);
    t += &match no_class {
        true => "  classes: none (training segments only)\n".to_string(),
        false => format!("  classes: {}\n", classes.join(", ")),
    };
    let class = match &p.class_evidence {
        None if no_class => "no class steps".to_string(),
        Some(e) => format!(
            "class from the predicted {} volume",
            e.label_names.join(" + ")
        ),
        None => format!(
            "class crop {:?} of {:?}-voxel blocks every {} steps",
            p.class_window, p.class_stride, p.class_every
        ),
    };
    t += &format!(
        "plan ({:?}): spacing {:.3?} mm, patch {:?}, depth {}, width {}, batch {}, {class}\n",
        p.device, p.spacing_mm, p.patch, p.depth, p.base_channels, p.batch
    );
    t += &format!("  inputs: {}\n", p.sequences.join(", "));
    t += &format!(
        "  foreground patches {:.2}, label weights {:.3?}, class weights {:.3?}, augmentation {:?}, {} steps in {} epochs\n",
        p.foreground_fraction, p.label_weights, p.class_weights, p.augmentation, p.steps, p.epochs
    );
    for r in &p.rationale {
        t += &format!("  because: {r}\n");
    }
    for w in &p.warnings {
        t += &format!("warning: {w}\n");
    }
    t
}
