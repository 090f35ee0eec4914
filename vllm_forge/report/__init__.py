"""Run records, figure data, figures and the report page."""
