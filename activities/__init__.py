"""Every side effect of SecFlow: scanners, the store, the workspace, reports."""
