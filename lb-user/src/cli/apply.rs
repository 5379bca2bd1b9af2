//! `lb apply` and `lb create`: manifests into the store, every object or none.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::AllocationArgs;
use crate::{
    model::{FieldValidation, Manifest, ManifestError, SHOWN_VALUE, read_manifest_with, shown},
    store::{Mode, Store},
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
    let Manifest {
        docs,
        skipped,
        warnings,
    } = read_manifests(&a.files, a.strict_kinds, a.validate)?;
    for w in &warnings {
        eprintln!("Warning: {w}");
    }
    for s in &skipped {
        println!("{s}");
    }
    if docs.is_empty() && !skipped.is_empty() {
        return Ok(());
    }
    if docs.is_empty() {
        bail!(
            "no objects passed to {}",
            match mode {
                Mode::Apply => "apply",
                Mode::Create => "create",
            }
        );
    }
    let names: Vec<(&str, String)> = docs
        .iter()
        .map(|d| (d.object.kind().resource(), d.object.key().name))
        .collect();
    let outcomes = store.apply_owned(docs, &alloc, mode)?;
    for ((resource, name), outcome) in names.into_iter().zip(outcomes) {
        println!("{resource}/{name} {}", outcome.as_str());
    }
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
    let read = |name: &str, text: &str| -> Result<Manifest> {
        let m = read_manifest_with(name, text, validation)?;
        if strict_kinds && let Some(s) = m.skipped.first() {
            bail!(
                "{} (document {}): {}/{}: lb serves v1 Service, v1 Pod and discovery.k8s.io/v1 EndpointSlice (--strict-kinds)",
                s.file,
                s.index,
                shown(&s.resource, SHOWN_VALUE),
                shown(&s.name, SHOWN_VALUE)
            );
        }
        Ok(m)
    };
    let mut all = Manifest::default();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            let m = read("<stdin>", &text)?;
            all.docs.extend(m.docs);
            all.skipped.extend(m.skipped);
            all.warnings.extend(m.warnings);
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
            let m = read(&name, &text)?;
            all.docs.extend(m.docs);
            all.skipped.extend(m.skipped);
            all.warnings.extend(m.warnings);
        }
    }
    Ok(all)
}
