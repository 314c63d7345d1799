"""The seeded click simulator (numpy / pyarrow, no Beam): the built-in default data with a known ground truth
(entry: `click_logs.simulate`)."""
