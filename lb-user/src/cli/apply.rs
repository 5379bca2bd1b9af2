//! `lb apply` and `lb create`: manifests into the store, every object or none.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::AllocationArgs;
use crate::{
    model::{FieldValidation, Manifest, ManifestError, SHOWN_VALUE, read_manifest_each, shown},
    store::{Mode, Outcome, Store},
};

#[derive(Args)]
pub struct ApplyArgs {
    /// Manifest file(s) or directories; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Refuse manifests that hold objects of kinds lb does not serve (by default
    /// they are skipped, one line each, and the rest is applied).
    #[arg(long)]
    pub strict_kinds: bool,
    /// Fields an object's type does not know (a misspelt `targetPortt`): `strict`
    /// refuses the manifest, `warn` applies it with a warning for each, `ignore`
    /// applies it silently (kubectl's --validate; true = strict, false = ignore).
    #[arg(long, default_value = "strict", value_parser = field_validation())]
    pub validate: FieldValidation,
    #[command(flatten)]
    pub alloc: AllocationArgs,
}

pub fn run(store: &Store, a: &ApplyArgs, mode: Mode) -> Result<()> {
    let alloc = a.alloc.parse()?;
    // Each batch of documents is stored as it is read, in one transaction opened
    // with the first batch and committed after the last: a manifest of 1,000,000
    // objects is never held whole, and an error anywhere stores nothing. The
    // manifests are read on a thread of their own, so reading (YAML, checks) and
    // storing (JSON, SQLite) overlap; the first error in the documents' order wins.
    let mut bulk = None;
    let mut applied: Vec<(&str, String, Outcome)> = Vec::new();
    let (mut skipped, mut warnings) = (Vec::new(), Vec::new());
    let mut store_batch = |m: Manifest| -> Result<()> {
        warnings.extend(m.warnings);
        skipped.extend(m.skipped);
        if m.docs.is_empty() {
            return Ok(());
        }
        let names: Vec<(&str, String)> = m
            .docs
            .iter()
            .map(|d| {
                (
                    d.object.kind().resource(),
                    d.object.meta().name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let bulk = match &mut bulk {
            Some(b) => b,
            None => bulk.insert(store.bulk_apply(&alloc, mode)?),
        };
        let outcomes = bulk.apply(m.docs)?;
        applied.extend(names.into_iter().zip(outcomes).map(|((r, n), o)| (r, n, o)));
        Ok(())
    };
    std::thread::scope(|scope| {
        let (batches, read) = std::sync::mpsc::sync_channel::<Manifest>(1);
        let reader = scope.spawn(move || {
            each_manifest(&a.files, a.strict_kinds, a.validate, |m| {
                // A send fails only once the storing side stopped (it has an error).
                batches
                    .send(m)
                    .map_err(|_| anyhow::anyhow!("storing stopped"))
            })
        });
        let mut stored = Ok(());
        for m in &read {
            stored = store_batch(m);
            if stored.is_err() {
                break;
            }
        }
        drop(read);
        let reading = reader.join().expect("the manifest reader panicked");
        stored.and(reading)
    })?;
    if let Some(bulk) = bulk {
        bulk.commit()?;
    }
    for w in &warnings {
        eprintln!("Warning: {w}");
    }
    for s in &skipped {
        println!("{s}");
    }
    if applied.is_empty() && skipped.is_empty() {
        bail!(
            "no objects passed to {}",
            match mode {
                Mode::Apply => "apply",
                Mode::Create => "create",
            }
        );
    }
    // One write for many lines (standard output is line-buffered: 1,100,000
    // objects were as many writes).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (resource, name, outcome) in applied {
        writeln!(out, "{resource}/{name} {}", outcome.as_str())?;
    }
    out.flush()?;
    Ok(())
}

fn field_validation() -> impl clap::builder::TypedValueParser<Value = FieldValidation> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["strict", "warn", "ignore", "true", "false"]).map(
        |w| match w.as_str() {
            "warn" => FieldValidation::Warn,
            "ignore" | "false" => FieldValidation::Ignore,
            _ => FieldValidation::Strict,
        },
    )
}

/// Every document of every file (directories: their .yaml, .yml and .json files,
/// sorted), and the objects of kinds lb does not serve (an error if `strict_kinds`).
pub fn read_manifests(
    files: &[String],
    strict_kinds: bool,
    validation: FieldValidation,
) -> Result<Manifest> {
    let mut all = Manifest::default();
    each_manifest(files, strict_kinds, validation, |m| {
        all.extend(m);
        Ok(())
    })?;
    Ok(all)
}

/// [`read_manifests`], handing the documents to `each` a batch at a time, in order.
fn each_manifest(
    files: &[String],
    strict_kinds: bool,
    validation: FieldValidation,
    mut each: impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    let mut read = |name: &str, text: &str| -> Result<()> {
        read_manifest_each(name, text, validation, |m: Manifest| {
            if strict_kinds && let Some(s) = m.skipped.first() {
                bail!(
                    "{} (document {}): {}/{}: lb serves v1 Service, v1 Pod and discovery.k8s.io/v1 EndpointSlice (--strict-kinds)",
                    s.file,
                    s.index,
                    shown(&s.resource, SHOWN_VALUE),
                    shown(&s.name, SHOWN_VALUE)
                );
            }
            each(m)
        })
    };
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            read("<stdin>", &text)?;
            continue;
        }
        let path = Path::new(f);
        let paths: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{f}: reading directory"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        for p in paths {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(&p).map_err(|error| ManifestError::Read {
                file: name.clone(),
                error,
            })?;
            read(&name, &text)?;
        }
    }
    Ok(())
}
