//! `lb apply` and `lb create`: manifests into the store, every object or none.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::AllocationArgs;
use crate::{
    model::{Manifest, ManifestError, parse_manifest, read_manifest},
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
    #[command(flatten)]
    pub alloc: AllocationArgs,
}

pub fn run(store: &Store, a: &ApplyArgs, mode: Mode) -> Result<()> {
    let alloc = a.alloc.parse()?;
    let Manifest { docs, skipped } = read_manifests(&a.files, a.strict_kinds)?;
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
    let outcomes = store.apply(&docs, &alloc, mode)?;
    for (doc, outcome) in docs.iter().zip(outcomes) {
        println!(
            "{}/{} {}",
            doc.object.kind().resource(),
            doc.object.key().name,
            outcome.as_str()
        );
    }
    Ok(())
}

/// Every document of every file (directories: their .yaml, .yml and .json files,
/// sorted), and the objects of kinds lb does not serve (an error if `strict_kinds`).
pub fn read_manifests(files: &[String], strict_kinds: bool) -> Result<Manifest> {
    let read = |name: &str, text: &str| -> Result<Manifest> {
        if strict_kinds {
            Ok(Manifest {
                docs: parse_manifest(name, text)?,
                skipped: Vec::new(),
            })
        } else {
            Ok(read_manifest(name, text)?)
        }
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
        }
    }
    Ok(all)
}
