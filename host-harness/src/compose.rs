//! Composition: plug components' exports into another's imports, with the
//! standard tooling's library (wac-graph, what `wac plug` runs).

use std::path::Path;
use thiserror::Error;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

#[derive(Debug, Error)]
pub enum ComposeError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot compose: {0}")]
    Compose(String),
}

/// Plugs the exports of `plugs` into the matching imports of `socket` and
/// returns the composed component, which exports what `socket` exports.
pub fn plug(socket: &Path, plugs: &[&Path]) -> Result<Vec<u8>, ComposeError> {
    let read = |path: &&Path| {
        std::fs::read(path).map_err(|error| ComposeError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })
    };
    let plugs = plugs.iter().map(read).collect::<Result<Vec<_>, _>>()?;
    plug_bytes(&read(&socket)?, &plugs)
}

/// [`plug`], with the components' bytes (e.g. the embedded edge function).
pub fn plug_bytes(socket: &[u8], plugs: &[Vec<u8>]) -> Result<Vec<u8>, ComposeError> {
    let mut graph = CompositionGraph::new();
    let mut register = |name: String, bytes: &[u8]| {
        let package = Package::from_bytes(&name, None, bytes, graph.types_mut()).map_err(|e| ComposeError::Read {
            path: name.clone(),
            reason: format!("{e:#}"),
        })?;
        graph
            .register_package(package)
            .map_err(|e| ComposeError::Compose(e.to_string()))
    };
    let socket = register("compose:socket".into(), socket)?;
    let plugs = plugs
        .iter()
        .enumerate()
        .map(|(index, bytes)| register(format!("compose:plug{index}"), bytes))
        .collect::<Result<Vec<_>, _>>()?;
    wac_graph::plug(&mut graph, plugs, socket)
        .map_err(|e| ComposeError::Compose(format!("{:#}", anyhow::Error::from(e))))?;
    graph
        .encode(EncodeOptions::default())
        .map_err(|e| ComposeError::Compose(format!("{:#}", anyhow::Error::from(e))))
}
