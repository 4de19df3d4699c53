"""The verbs that compose the whole stack, one module each: `wmpo demo` (demo), `loop` (loop),
`loop-report` (loop_report) and `loop-watch` (loop_watch). The runs themselves live in
wmpo_core.demo and wmpo_core.loop; these modules hold only their command lines."""
