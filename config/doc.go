// Package config loads, validates and compares the llmproxy configuration.
//
// A configuration is built in three layers, each overriding the one before:
//
//  1. the defaults of Default, documented on each field of Config.
//  2. a YAML file, read by Load or Parse, which may set any subset of keys.
//  3. the LLMPROXY_* environment variables read by Load, ParseEnv and
//     FromEnv: LLMPROXY_LISTEN, LLMPROXY_NODES, LLMPROXY_REDIS_ADDR,
//     LLMPROXY_REDIS_PASSWORD, LLMPROXY_ADMIN_TOKEN and LLMPROXY_LOG_LEVEL.
//     An empty variable counts as unset.
//
// The result is then validated as a whole. Every problem is reported at
// once, each with its YAML path and line, in an *Errors. Legal but risky
// settings are reported separately by (*Config).Warnings.
//
// In the file, durations are Go duration strings ("90s", "5m", "1h30m"),
// sizes in bytes are integers or strings with a unit ("64MiB", "1GB"), a
// null or empty value of a section, list or map means an empty one, and a
// null scalar is rejected.
package config
