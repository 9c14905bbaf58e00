"""Detection: the rules that turn denials and unexpected prompts into alerts and containment (`rules`), and
the ledger every transition script includes to apply them atomically (`lua/ledger.lua`)."""
