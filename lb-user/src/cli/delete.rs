//! `lb delete`: objects by name, or by the manifests that made them.

use anyhow::{Result, anyhow, bail};
use clap::Args;

use super::{apply::read_manifests, parse_kind};
use crate::{
    model::{FieldValidation, Kind, ObjectKey},
    store::Store,
};

#[derive(Args)]
pub struct DeleteArgs {
    /// Manifests whose objects to delete.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[arg(value_parser = parse_kind())]
    pub resource: Option<Kind>,
    pub names: Vec<String>,
    #[arg(short = 'n', long, default_value = crate::model::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

pub fn run(store: &Store, d: &DeleteArgs) -> Result<()> {
    let targets: Vec<(Kind, ObjectKey)> = if !d.files.is_empty() {
        let manifest = read_manifests(&d.files, false, FieldValidation::Ignore)?;
        for s in &manifest.skipped {
            println!("{s}");
        }
        manifest
            .docs
            .iter()
            .map(|doc| (doc.object.kind(), doc.object.key()))
            .collect()
    } else {
        let kind = d
            .resource
            .ok_or_else(|| anyhow!("delete: give -f FILE, or a resource (svc, pods) and names"))?;
        if d.names.is_empty() {
            bail!("delete: resource(s) were provided, but no name was specified");
        }
        d.names
            .iter()
            .map(|name| (kind, ObjectKey::new(&d.namespace, name)))
            .collect()
    };
    store.delete(&targets)?;
    for (kind, key) in targets {
        println!("{} \"{}\" deleted", kind.resource(), key.name);
    }
    Ok(())
}
