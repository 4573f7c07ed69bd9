"""Files, outputs and reports: everything the jobs read and write goes through here."""
