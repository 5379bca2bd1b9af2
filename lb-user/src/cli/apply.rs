//! `lb apply` and `lb create`: manifests into the store, every object or none.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::AllocationArgs;
use crate::{
    model::{Document, ManifestError, parse_manifest},
    store::{Mode, Store},
};

#[derive(Args)]
pub struct ApplyArgs {
    /// Manifest file(s) or directories; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub alloc: AllocationArgs,
}

pub fn run(store: &Store, a: &ApplyArgs, mode: Mode) -> Result<()> {
    let alloc = a.alloc.parse()?;
    let docs = read_manifests(&a.files)?;
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

/// Every document of every file (directories: their .yaml, .yml and .json files, sorted).
pub fn read_manifests(files: &[String]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            docs.extend(parse_manifest("<stdin>", &text)?);
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
            docs.extend(parse_manifest(&name, &text)?);
        }
    }
    Ok(docs)
}
