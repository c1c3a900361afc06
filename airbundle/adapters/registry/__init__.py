"""The OCI distribution API: our own client over urllib3, a source and a target."""
