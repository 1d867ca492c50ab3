"""`cachetap simulate`: replay access logs and captures through the production cache policy code."""
