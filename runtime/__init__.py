"""How every Balcão process runs: the machinery the server and the bot share.

Reading configuration from the environment (`environment`), logging with secrets
masked (`logs`), stop signals and a bounded shutdown (`lifecycle`), connecting
to NATS, declaring the JetStream streams and the consume loop (`jetstream`),
the one policy every retry is paced by (`retry`, standard library only: the CLI
uses it too), and fail points for crash tests (`failpoints`).

What the processes say to each other on the wire is not here but in `contract`.
`jetstream` lives here, not there, because it is nats-py code (connections,
`StreamConfig`s, acks): the stream names, subjects and payloads it applies are
the contract's, and `contract` stays free of third-party imports.
"""
