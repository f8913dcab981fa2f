//! `mriloop export-mesh`: a case's label surfaces (or a label file's) as an STL or PLY mesh in
//! world millimetres (LPS, as 3D Slicer assumes for these formats), for a server with no window.
//! The surfaces are the 3D view's (`volume::surface`); the PLY colours each label as the
//! project's label table does. `--out FILE.png` renders them instead, as the 3D view does, on
//! whatever graphics adapter wgpu finds (a software one such as lavapipe will do).

use crate::project::default_color;
use crate::project::Project;
use crate::session::load::read_mask;
use crate::volume::mesh_io::{write_mesh, MeshFormat};
use crate::volume::surface::{LabelSurfaces, Mesh};
use crate::volume::Volume;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Arguments of `mriloop export-mesh`.
#[derive(clap::Args, Debug)]
pub struct ExportMeshArgs {
    /// A project folder (with --case), or a label file (.nii, .nii.gz, .mgz, .nrrd, .seg.nrrd).
    pub path: PathBuf,
    /// The case whose mask is meshed (a project).
    #[arg(long)]
    pub case: Option<String>,
    /// Mesh the case's predicted mask instead of its reference (corrected) one.
    #[arg(long)]
    pub prediction: bool,
    /// Only this label, by name or value (default: every label, in one file).
    #[arg(long)]
    pub label: Option<String>,
    /// The file to write: `.stl` or `.ply` (a mesh), or `.png` (a rendered view).
    #[arg(long)]
    pub out: PathBuf,
    /// `.png`: the direction it is seen from (anterior, posterior, left, right, superior,
    /// inferior, "anterior left").
    #[arg(long, default_value = "anterior left")]
    pub from: String,
    /// `.png`: its height in pixels (square).
    #[arg(long, default_value_t = 1024)]
    pub size: u32,
}

/// `mriloop export-mesh`.
pub fn run(args: ExportMeshArgs) -> Result<()> {
    let png = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if MeshFormat::of_path(&args.out).is_none() && !png {
        bail!(
            "--out {}: write a surface as .stl or .ply, or a view of it as .png",
            args.out.display()
        );
    }
    let (mask, names) = load(&args)?;
    let [nx, ny, nz, _] = mask.dims();
    let surfaces = LabelSurfaces::new(mask.data(), [nx, ny, nz], *mask.affine());
    let labels = match &args.label {
        None => surfaces.labels(),
        Some(want) => vec![label_value(want, &names)?],
    };
    let meshes: Vec<(u8, Mesh)> = labels.iter().map(|l| (*l, surfaces.mesh(*l))).collect();
    let triangles: usize = meshes.iter().map(|(_, m)| m.triangles()).sum();
    if triangles == 0 {
        bail!("no surface: the mask holds none of labels {labels:?}");
    }
    let parts: Vec<(&Mesh, [u8; 3])> = meshes
        .iter()
        .map(|(l, m)| (m, color_of(*l, &names)))
        .collect();
    if png {
        render_png(&args, &mask, &parts)?;
    } else {
        write_mesh(&args.out, &parts)?;
    }
    for ((l, m), (_, c)) in meshes.iter().zip(&parts) {
        let name = names
            .iter()
            .find(|n| n.0 == *l)
            .map_or("", |n| n.1.as_str());
        println!(
            "label {l} {name}: {} triangles, colour {c:?}",
            m.triangles()
        );
    }
    let space = if png { "seen" } else { "LPS mm" };
    println!(
        "wrote {} ({triangles} triangles, {space})",
        args.out.display()
    );
    Ok(())
}

/// Render `parts` as the 3D view shows them (orthographic, lit, the mask's world box in view)
/// from `--from`, `--size` pixels square, and write the PNG atomically.
fn render_png(args: &ExportMeshArgs, mask: &Volume<u8>, parts: &[(&Mesh, [u8; 3])]) -> Result<()> {
    use crate::render::{GpuContext, SurfaceMesh, SurfacePipeline, SurfaceTarget};
    use crate::session::{view::WorldBox, Camera3d, Direction3d};
    let from = Direction3d::ALL
        .into_iter()
        .find(|d| d.name().eq_ignore_ascii_case(args.from.trim()))
        .with_context(|| format!("--from {}: not a standard direction", args.from))?;
    let size = args.size.clamp(16, 8192);
    let gpu = GpuContext::headless()
        .context("rendering a PNG needs a graphics adapter; write .stl or .ply instead")?;
    let pipeline = SurfacePipeline::new(&gpu.device, crate::render::OFFSCREEN_FORMAT);
    let uploaded: Vec<SurfaceMesh> = parts
        .iter()
        .filter_map(|(m, c)| {
            let rgba = [c[0], c[1], c[2]].map(|v| f32::from(v) / 255.0);
            SurfaceMesh::upload(&gpu.device, &pipeline, m, [rgba[0], rgba[1], rgba[2], 1.0])
        })
        .collect();
    let refs: Vec<&SurfaceMesh> = uploaded.iter().collect();
    let [nx, ny, nz, _] = mask.dims();
    let world = WorldBox::of_grid(mask.affine(), [nx, ny, nz]);
    let camera = Camera3d::from_direction(from).orbit(&world, 1.0);
    let target = SurfaceTarget::new(&gpu.device, [size, size]);
    target.render(
        &gpu.device,
        &gpu.queue,
        &pipeline,
        &refs,
        (&camera, wgpu::Color::BLACK),
    );
    let rgba = target.read_pixels(&gpu.device, &gpu.queue)?;
    let bytes = crate::render::rgba_png(rgba, [size, size]).map_err(anyhow::Error::msg)?;
    crate::atomic::write_atomic(&args.out, &bytes)
        .with_context(|| format!("writing {}", args.out.display()))
}

/// Label values, names and colours.
type Names = Vec<(u8, String, [u8; 3])>;

/// The mask to mesh and the label table that names its values.
fn load(args: &ExportMeshArgs) -> Result<(Volume<u8>, Names)> {
    if args.path.is_file() {
        let mask = read_mask(&args.path).map_err(anyhow::Error::msg)?;
        return Ok((mask, Vec::new()));
    }
    let project = Project::open(&args.path)?;
    let id = args.case.as_deref().context("a project needs --case ID")?;
    let case = project
        .manifest
        .case(id)
        .with_context(|| format!("the project has no case {id}"))?;
    let rel = if args.prediction {
        case.predicted_mask.as_deref()
    } else {
        case.reference_mask.as_deref()
    };
    let what = if args.prediction {
        "predicted"
    } else {
        "reference"
    };
    let rel = rel.with_context(|| format!("case {id} has no {what} mask"))?;
    let mask = project.load_mask(rel)?;
    let names = project
        .manifest
        .labels
        .labels()
        .iter()
        .map(|l| (l.value, l.name.clone(), l.color))
        .collect();
    Ok((mask, names))
}

/// The value `want` names: a label's name, else a number.
fn label_value(want: &str, names: &Names) -> Result<u8> {
    if let Some(l) = names.iter().find(|l| l.1 == want) {
        return Ok(l.0);
    }
    want.parse()
        .with_context(|| format!("--label {want}: no label of that name or value"))
}

/// A label's colour in the table, else the default for its value.
fn color_of(value: u8, names: &Names) -> [u8; 3] {
    names
        .iter()
        .find(|l| l.0 == value)
        .map_or_else(|| default_color(value), |l| l.2)
}
