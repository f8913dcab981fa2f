//! `mriloop gpu`: list the graphics adapters wgpu finds here (the ones the window and the GPU
//! training backend could use), with what `--backend auto` would train on. Useful before a long
//! run on a cluster node, and the check the tests use that an environment has no adapter at all.
//!
//! Invariants: adapters are found exactly as the window and training find them (wgpu's instance
//! from the environment: `WGPU_BACKEND`, `VK_ICD_FILENAMES`, ...); finding none is an answer
//! (exit status 0, `adapters: 0`), not an error.

use anyhow::Result;

/// Arguments of `mriloop gpu`.
#[derive(clap::Args, Debug)]
pub struct GpuArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The adapters wgpu finds with the environment's settings.
pub fn adapters() -> Vec<wgpu::AdapterInfo> {
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| a.get_info())
        .collect()
}

/// `mriloop gpu`.
pub fn run(args: GpuArgs) -> Result<()> {
    let found = adapters();
    let (_, training) = crate::model::choose_device("auto");
    if args.json {
        let list: Vec<_> = found
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "backend": format!("{:?}", a.backend),
                    "device_type": format!("{:?}", a.device_type),
                    "driver": a.driver,
                    "driver_info": a.driver_info,
                })
            })
            .collect();
        let v = serde_json::json!({ "adapters": list, "training_auto": training });
        return super::emit(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let mut text = format!("adapters: {}\n", found.len());
    for (k, a) in found.iter().enumerate() {
        let driver = [a.driver.as_str(), a.driver_info.as_str()].join(" ");
        text += &format!(
            "  {}: {} ({:?}, {:?}; driver {})\n",
            k + 1,
            a.name,
            a.backend,
            a.device_type,
            driver.trim()
        );
    }
    if found.is_empty() {
        text += "no graphics adapter: the window cannot open here; the headless commands \
                 (train, predict, eval, experiment and their plots) run on the CPU\n";
    }
    text += &format!("training with --backend auto: {training}\n");
    super::emit(&text)
}
