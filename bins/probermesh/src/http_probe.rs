//! `probermesh http-probe`: the agent's HTTP prober on the command line, like `curl -w` with
//! blackbox_exporter's phases. For operators (where does the time of this URL go, from here)
//! and for the benchmark against blackbox_exporter, which runs many probes concurrently.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use argh::FromArgs;
use probermesh_adapters::bounded_read::{Links, read_regular_file};
use probermesh_adapters::dns::HickoryDns;
use probermesh_adapters::http::HyperProber;
use probermesh_core::model::http_module::{FileRef, Secret};
use probermesh_core::model::setting::MAX_PEM_FILE_LEN;
use probermesh_core::model::{HttpModule, HttpResult, HttpUrl};
use probermesh_core::ports::HttpProber;

use crate::print_line;

/// Probe a URL with the ProberMesh HTTP prober and print the phases (resolve, connect, tls,
/// processing, transfer), the status code, the TLS version and certificate expiry.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "http-probe")]
pub(crate) struct HttpProbe {
    /// probes to run (default 1)
    #[argh(option, short = 'n', default = "1")]
    count: u32,
    /// probes in flight at once (default 1)
    #[argh(option, default = "1")]
    concurrency: u32,
    /// seconds one probe may take (default 10)
    #[argh(option, default = "10.0")]
    timeout_s: f64,
    /// trust this PEM CA file instead of the system roots
    #[argh(option)]
    ca_file: Option<String>,
    /// accept any server certificate
    #[argh(switch)]
    insecure: bool,
    /// print only a summary line (for many probes)
    #[argh(switch)]
    quiet: bool,
    /// the URL (http:// is assumed without a scheme, as in the probe file)
    #[argh(positional)]
    url: String,
}

pub(crate) fn run(args: &HttpProbe) -> Result<()> {
    let url =
        HttpUrl::parse(&args.url).with_context(|| format!("http-probe: URL {:?}", args.url))?;
    if args.count == 0 || args.concurrency == 0 {
        bail!("http-probe: -n and --concurrency must be at least 1");
    }
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        bail!(
            "http-probe: --timeout-s {} must be a positive number",
            args.timeout_s
        );
    }
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let mut module = HttpModule::default();
    if let Some(path) = &args.ca_file {
        // The operator's own file on this machine (the agent never reads one).
        let bytes = read_regular_file(Path::new(path), MAX_PEM_FILE_LEN as u64, Links::Follow)
            .with_context(|| format!("http-probe: --ca-file {path:?}"))?;
        let pem = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("http-probe: --ca-file {path:?}: not UTF-8 text"))?;
        module.client.tls.ca_file = Some(FileRef::with_contents(path.clone(), Secret::new(pem)));
    }
    module.client.tls.insecure_skip_verify = args.insecure;
    // Two workers are plenty for a one-shot command.
    let results = crate::block_on(Some(2), async {
        let dns = Arc::new(HickoryDns::from_system_conf()?);
        let prober = Arc::new(HyperProber::new(dns));
        let module = Arc::new(module);
        let url = Arc::new(url);
        let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency as usize));
        let mut tasks = Vec::with_capacity(args.count as usize);
        for _ in 0..args.count {
            let permit = Arc::clone(&semaphore)
                .acquire_owned()
                .await
                .context("the probe limiter closed")?;
            let (prober, module, url) =
                (Arc::clone(&prober), Arc::clone(&module), Arc::clone(&url));
            tasks.push(tokio::spawn(async move {
                let result = prober.probe(&url, &module, timeout).await;
                drop(permit);
                result
            }));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.context("a probe task failed")?);
        }
        anyhow::Ok(results)
    })?;
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    if !args.quiet {
        for result in &results {
            print_line(&describe(result))?;
        }
    }
    print_line(&format!(
        "{} probes of {}, {failed} failed",
        results.len(),
        args.url
    ))?;
    if failed == results.len() {
        bail!("http-probe: every probe failed");
    }
    Ok(())
}

fn describe(result: &HttpResult) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p = &result.phases;
    let mut line = format!(
        "resolve={:.3}ms connect={:.3}ms tls={:.3}ms processing={:.3}ms transfer={:.3}ms",
        ms(p.resolve),
        ms(p.connect),
        ms(p.tls),
        ms(p.processing),
        ms(p.transfer)
    );
    if let Some(code) = result.status_code {
        line.push_str(&format!(" status={code}"));
    }
    if let Some(tls) = &result.tls {
        line.push_str(&format!(
            " tls_version=\"{}\" cert_expiry_unix={}",
            tls.version.as_str(),
            tls.earliest_expiry_unix_secs
        ));
    }
    match &result.failure {
        Some(failure) => line.push_str(&format!(" failed_reason=\"{failure}\"")),
        None => line.push_str(" success"),
    }
    line
}
