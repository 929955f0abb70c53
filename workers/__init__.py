"""scp2fhir's processing side: the fold, the quiet check, the FHIR mapping and output."""
