"""scp2fhir's receiving side: the DICOM storage SCP, its settings and the command line."""
