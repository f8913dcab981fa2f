//! Commands that make or convert projects: `phantom` (synthetic cases), `import` / `export`
//! (nnU-Net v2 raw datasets), `slices` (a 2D project from a 3D image and its labels) and
//! `import-dicom` (list a DICOM folder's series, add them to a case or write them as NIfTI) and
//! `add-case` (a case from the user's own image and mask files).
//!
//! Invariants: flags are checked before anything is written; each command prints what it wrote
//! and where; a DICOM series or file that cannot be imported is listed with the reason, and
//! choosing none of the importable ones is an error.

use crate::phantom::template::{Template, TemplateKind, TemplateSource};
use crate::project::add_case::{add_case, NewCase};
use crate::project::{dicom_import, nnunet, slices, InputForm, Manifest, Project, SequenceName};
use crate::volume::dicom::{scan_dir, DicomScan};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Input form of the phantom's cases.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Form {
    /// Multi-sequence 3D volumes.
    #[value(name = "3d")]
    ThreeD,
    /// Single 2D slices.
    #[value(name = "2d")]
    TwoD,
    /// 4D BOLD-like time series.
    #[value(name = "4d")]
    FourD,
}

/// Arguments of `mriloop phantom`.
#[derive(clap::Args, Debug)]
pub struct PhantomArgs {
    /// Project folder to create.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 10)]
    pub cases: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Input form: multi-sequence 3D, single 2D slices, or a 4D BOLD time series.
    #[arg(long, value_enum, default_value_t = Form::ThreeD)]
    pub form: Form,
    /// Nominal voxels per axis (field of view: this many mm in 3D/2D, 3 mm each in 4D).
    #[arg(long, default_value_t = 64)]
    pub grid: usize,
    /// Time points of a 4D case.
    #[arg(long, default_value_t = 100)]
    pub frames: usize,
    /// Voxel size (mm, isotropic) of 3D/2D cases (default: random 0.7–1.2 mm per axis).
    #[arg(long)]
    pub voxel_mm: Option<f64>,
    /// Lesions are all white-matter lesions, each visible on only one of T1, T2 and FLAIR.
    #[arg(long)]
    pub sequence_specific_lesions: bool,
    /// A thick-slice acquisition (3D): slices this many mm thick along the third stored axis
    /// (each the mean of the thin slices it covers; e.g. 4 for a clinical 2D FLAIR).
    #[arg(long)]
    pub slice_mm: Option<f64>,
    /// The head: the analytic phantom, or subjects derived from a real brain (Colin27, from
    /// Debian's mricron-data; MNI152 2009, from nilearn, with mricron-data's AAL atlas):
    /// deformed, posed, with synthesised sequences, the habenula and the atlas's subcortical
    /// structures (3D and 2D forms; --grid is then the field of view about the deep grey
    /// matter, e.g. 96), or whole-brain BOLD runs with networks at their places (4D; 3 mm
    /// voxels, --grid 64 covers the brain).
    #[arg(long, value_enum, default_value_t = Anatomy::Phantom)]
    pub anatomy: Anatomy,
    /// Folder of the template files (Colin27: ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz, default
    /// where mricron-data installs them; MNI152: nilearn's mni_icbm152_*_09a files, default
    /// the installed nilearn's data folder).
    #[arg(long)]
    pub template_dir: Option<PathBuf>,
    /// Folder of the AAL atlas for MNI152 subjects (default: where mricron-data installs it).
    #[arg(long)]
    pub atlas_dir: Option<PathBuf>,
}

/// The head phantom subjects are made from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anatomy {
    /// The analytic head (ellipsoid shells).
    Phantom,
    /// The Colin27 template (a real brain).
    Colin27,
    /// The MNI152 2009 template (an average of 152 brains).
    Mni152,
}

/// Where the template of `args` is: the given folders, else the installed packages'.
fn template_source(args: &PhantomArgs) -> Result<Option<TemplateSource>> {
    let mricron = || PathBuf::from(crate::phantom::template::DEFAULT_TEMPLATE_DIR);
    Ok(match args.anatomy {
        Anatomy::Phantom => None,
        Anatomy::Colin27 => Some(TemplateSource::colin27(
            args.template_dir.clone().unwrap_or_else(mricron),
        )),
        Anatomy::Mni152 => {
            let dir = match &args.template_dir {
                Some(dir) => dir.clone(),
                None => crate::phantom::template::nilearn_data_dir().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--anatomy mni152: nilearn's data folder not found (pip install nilearn, or give --template-dir)"
                    )
                })?,
            };
            Some(TemplateSource {
                kind: TemplateKind::Mni152,
                dir,
                atlas_dir: args.atlas_dir.clone().unwrap_or_else(mricron),
            })
        }
    })
}

/// Print how the atlas fits the template's own tissue maps (MNI152; Colin27's atlas was drawn
/// on it).
fn print_atlas_fit(template: &Template) {
    if template.atlas_fit.is_empty() {
        return;
    }
    println!("AAL on MNI152 (grey-matter share of each structure's voxels, inside vs the 2 mm around it):");
    for f in &template.atlas_fit {
        println!(
            "  {:<14} {:>6} voxels: grey {:.2} inside, {:.2} around",
            f.name, f.voxels, f.grey_inside, f.grey_around
        );
    }
}

/// `mriloop phantom`.
pub fn phantom(args: PhantomArgs) -> Result<()> {
    if args.grid < 8 {
        bail!("--grid must be at least 8");
    }
    if args.voxel_mm.is_some_and(|v| !(0.2..=5.0).contains(&v)) {
        bail!("--voxel-mm must be between 0.2 and 5");
    }
    if args.slice_mm.is_some_and(|v| !(0.2..=10.0).contains(&v)) {
        bail!("--slice-mm must be between 0.2 and 10");
    }
    let template = template_source(&args)?.map(|t| t.load()).transpose()?;
    let cfg = crate::phantom::PhantomConfig {
        cases: args.cases,
        seed: args.seed,
        form: match args.form {
            Form::ThreeD => InputForm::Volume3d,
            Form::TwoD => InputForm::Slice2d,
            Form::FourD => InputForm::TimeSeries4d,
        },
        grid: args.grid,
        frames: args.frames,
        voxel_mm: args.voxel_mm,
        sequence_specific_lesions: args.sequence_specific_lesions,
        slice_mm: args.slice_mm,
        template: None,
    };
    let bar = indicatif::ProgressBar::new(args.cases as u64);
    let project =
        crate::phantom::generate_project_with(&args.out, &cfg, template.as_ref(), |done, _| {
            bar.set_position(done as u64)
        })?;
    bar.finish_and_clear();
    println!(
        "wrote {} cases to {}",
        project.manifest.cases.len(),
        project.manifest_path().display()
    );
    template.iter().for_each(print_atlas_fit);
    Ok(())
}

/// Arguments of `mriloop import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The dataset folder (holding dataset.json, imagesTr, labelsTr).
    pub dataset: PathBuf,
    /// Project folder to create.
    #[arg(long)]
    pub out: PathBuf,
}

/// `mriloop import`.
pub fn import(args: ImportArgs) -> Result<()> {
    let p = nnunet::import_nnunet(&args.dataset, &args.out)?;
    let n = p.manifest.cases.len();
    println!("imported {n} cases into {}", p.root().display());
    Ok(())
}

/// Arguments of `mriloop export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The project folder.
    pub project: PathBuf,
    /// Dataset folder to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `mriloop export`.
pub fn export(args: ExportArgs) -> Result<()> {
    let p = Project::open(&args.project)?;
    let s = nnunet::export_nnunet(&p, &args.out)?;
    println!(
        "exported {} training and {} test cases to {}",
        s.training,
        s.test,
        args.out.display()
    );
    Ok(())
}

/// Arguments of `mriloop slices`.
#[derive(clap::Args, Debug)]
pub struct SlicesArgs {
    /// The 3D image.
    #[arg(long)]
    pub image: PathBuf,
    /// A label volume on the image's grid (e.g. an atlas parcellation).
    #[arg(long)]
    pub labels: PathBuf,
    /// Labels to keep, as VALUE:NAME pairs, comma-separated (e.g. 71:caudate_L,72:caudate_R).
    #[arg(long)]
    pub keep: String,
    /// The project folder to create.
    #[arg(long)]
    pub out: PathBuf,
    /// Sequence name of the image.
    #[arg(long, default_value = "T1")]
    pub sequence: String,
    /// Keep slices with at least this many voxels of the kept labels.
    #[arg(long, default_value_t = 20)]
    pub min_voxels: usize,
    /// The class every case gets.
    #[arg(long, default_value = "slice")]
    pub class: String,
}

/// `--keep VALUE:NAME,...` as (value, name) pairs.
fn parse_keep(keep: &str) -> Result<Vec<(u32, String)>> {
    keep.split(',')
        .map(|pair| {
            let (v, n) = pair
                .split_once(':')
                .with_context(|| format!("--keep: {pair:?} is not VALUE:NAME"))?;
            let v: u32 = v
                .trim()
                .parse()
                .with_context(|| format!("--keep: {v:?} is not a label value"))?;
            Ok((v, n.trim().to_string()))
        })
        .collect()
}

/// `mriloop slices`.
pub fn slices(args: SlicesArgs) -> Result<()> {
    let options = slices::SliceOptions {
        keep: parse_keep(&args.keep)?,
        sequence: args.sequence,
        min_voxels: args.min_voxels,
        class: args.class,
    };
    let p = slices::slice_project(&args.image, &args.labels, &args.out, &options)?;
    println!(
        "wrote {} slice cases to {}",
        p.manifest.cases.len(),
        p.manifest_path().display()
    );
    Ok(())
}

/// Arguments of `mriloop import-dicom`.
#[derive(clap::Args, Debug)]
pub struct ImportDicomArgs {
    /// The folder (searched with its sub-folders).
    pub dir: PathBuf,
    /// A project to add the series to (created if the folder holds none).
    #[arg(long, requires = "case")]
    pub project: Option<PathBuf>,
    /// The case the series become sequences of (created if new).
    #[arg(long)]
    pub case: Option<String>,
    /// The series to import, by their number in the listing (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub series: Vec<usize>,
    /// Write each chosen series as OUT/<name>.nii.gz.
    #[arg(long, conflicts_with = "project")]
    pub out: Option<PathBuf>,
}

/// `mriloop import-dicom`: scan, list, then import the chosen series.
pub fn import_dicom(args: ImportDicomArgs) -> Result<()> {
    let scan = scan_dir(&args.dir)?;
    list_series(&args, &scan);
    let count = scan.series.len();
    if let Some(bad) = args.series.iter().find(|k| **k == 0 || **k > count) {
        bail!("--series {bad}: the listing has series 1 to {count}");
    }
    let picked: Vec<_> = if args.series.is_empty() {
        scan.series.iter().collect()
    } else {
        args.series.iter().map(|k| &scan.series[k - 1]).collect()
    };
    if (args.project.is_some() || args.out.is_some()) && picked.is_empty() {
        bail!("{}: no series could be imported", args.dir.display());
    }
    if let (Some(root), Some(case)) = (&args.project, &args.case) {
        let mut p = open_or_create(root)?;
        let names = dicom_import::add_series_to_case(&mut p, case, &picked)?;
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let manifest = p.manifest_path();
        let added = names.join(", ");
        println!("added to case {case} of {}: {added}", manifest.display());
    } else if let Some(out) = &args.out {
        for path in dicom_import::write_series_files(out, &picked)?
            .iter()
            .flatten()
        {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// Arguments of `mriloop add-case`.
#[derive(clap::Args, Debug)]
pub struct AddCaseArgs {
    /// The project (created if the folder holds none).
    pub project: PathBuf,
    /// The case id (a new case, or one to add images to).
    #[arg(long)]
    pub case: String,
    /// An image as SEQUENCE=FILE (T1, T2, FLAIR, DWI, ADC, Gd-T1, BOLD or a name of your own;
    /// NIfTI, NIfTI pair, MGZ or NRRD), repeated for each co-registered sequence; a BIDS file
    /// alone (sub-01_T1w.nii.gz, …_FLAIR, …_ce-gad_T1w) names its sequence.
    #[arg(long = "image", value_name = "SEQUENCE=FILE", value_parser = parse_image)]
    pub images: Vec<(SequenceName, PathBuf)>,
    /// The reference label mask (ground truth or a corrected segmentation).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// A label mask a network predicted elsewhere, to review in the window.
    #[arg(long)]
    pub prediction: Option<PathBuf>,
    /// The case's class (added to the project's classes if new).
    #[arg(long)]
    pub class: Option<String>,
}

/// `SEQUENCE=FILE` as a sequence name and a path; a BIDS file name alone (`…_T1w.nii.gz`)
/// names its sequence.
fn parse_image(text: &str) -> Result<(SequenceName, PathBuf), String> {
    if let Some((name, file)) = text.split_once('=') {
        if !name.is_empty() && !file.is_empty() {
            return Ok((SequenceName::from(name.to_string()), PathBuf::from(file)));
        }
    }
    let path = PathBuf::from(text);
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    match file_name.as_deref().and_then(SequenceName::from_bids_name) {
        Some(name) => Ok((name, path)),
        None => Err(format!(
            "{text:?}: give SEQUENCE=FILE, e.g. T1=scan.nii.gz (a BIDS name such as \
             sub-01_T1w.nii.gz names its sequence itself)"
        )),
    }
}

/// `mriloop add-case`: copy the files into the project as a case and say what was written.
pub fn add_case_cmd(args: AddCaseArgs) -> Result<()> {
    let new = NewCase {
        id: args.case,
        images: args.images,
        mask: args.mask,
        prediction: args.prediction,
        class: args.class,
    };
    let root = &args.project;
    let manifest = root.join(crate::project::MANIFEST_FILE);
    let (made_folder, made_project) = (!root.exists(), !manifest.exists());
    let made_cases = !root.join("cases").exists();
    let mut p = open_or_create(root)?;
    let added = match add_case(&mut p, &new) {
        Ok(added) => added,
        Err(e) => {
            // A project made for this case goes again: a refused case leaves nothing behind.
            if made_folder {
                let _ = std::fs::remove_dir_all(root);
            } else if made_project {
                let _ = std::fs::remove_file(&manifest);
                if made_cases {
                    let _ = std::fs::remove_dir_all(root.join("cases"));
                }
            }
            return Err(e.into());
        }
    };
    let verb = if added.created { "added" } else { "added to" };
    println!("{verb} case {} of {}", new.id, p.manifest_path().display());
    for file in &added.files {
        println!("  wrote {}", p.resolve(file).display());
    }
    for (value, name) in &added.new_labels {
        println!("  new label {value}: {name}");
    }
    Ok(())
}

/// ", diffusion: b = 0, 1000 s/mm² (N volumes)" for a diffusion series, else nothing.
fn diffusion_summary(gradients: &[crate::volume::dicom::Gradient]) -> String {
    if gradients.is_empty() {
        return String::new();
    }
    let label = crate::volume::dicom::b_values_label(gradients);
    format!(", diffusion: {label} ({} volumes)", gradients.len())
}

/// Print the scan: every series with its size and orientation, then what was not imported.
fn list_series(args: &ImportDicomArgs, scan: &DicomScan) {
    let (dir, files, n) = (args.dir.display(), scan.files_seen, scan.series.len());
    println!("{dir}: {files} files, {n} series");
    for (k, s) in scan.series.iter().enumerate() {
        let [nx, ny, nz, nt] = s.volume.dims();
        let sp = s.volume.spacing_mm();
        let time = if nt > 1 {
            format!(" x {nt}")
        } else {
            String::new()
        };
        println!(
            "  {}: \"{}\" {} {nx}x{ny}x{nz}{time} voxels of {:.2}x{:.2}x{:.2} mm, {} files, {}{}",
            k + 1,
            s.description,
            s.modality,
            sp[0],
            sp[1],
            sp[2],
            s.files.len(),
            s.volume.affine().orientation_code(),
            diffusion_summary(&s.diffusion)
        );
    }
    for p in &scan.problems {
        println!("  not imported: {p}");
    }
}

/// The project at `root`, or a new empty one named after the folder.
fn open_or_create(root: &std::path::Path) -> Result<Project> {
    if root.join(crate::project::MANIFEST_FILE).exists() || root.is_file() {
        return Ok(Project::open(root)?);
    }
    let name = root
        .file_name()
        .map_or_else(|| "imported".into(), |n| n.to_string_lossy().into_owned());
    Ok(Project::create(root, Manifest::new(name))?)
}
