"""Every `rocketctr bench ...` benchmark in one place: preprocessing speed, train step and train speed, serving latency,
and the model-quality bench (`quality/`). Benchmarks print figures; nothing here is a unit test."""
