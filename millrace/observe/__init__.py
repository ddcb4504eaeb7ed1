"""What an operator sees: traces, structured logs, metrics, and the collection and document reports (`millrace
status`, and `millrace status --doc`: why a document is or is not searchable).

May import: the client factory (millrace.clients) and every room below it; only the pipeline, search, the platform
and the command line sit above."""
