package config

import (
	"errors"
	"testing"
)

// nodeYAML is a valid node list, two lines long, that cases put first when
// they are about something else.
const nodeYAML = "nodes:\n  - url: http://127.0.0.1:11435\n"

// envOf returns a getenv that reads only vars.
func envOf(vars map[string]string) func(string) string {
	return func(name string) string { return vars[name] }
}

// mustParse parses doc with no environment and fails the test on any
// problem.
func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := ParseEnv([]byte(doc), "test.yaml", envOf(nil))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return c
}

// problemsOf parses doc with the given environment and returns its
// problems, failing the test when it loads.
func problemsOf(t *testing.T, doc string, env map[string]string) []Problem {
	t.Helper()
	c, err := ParseEnv([]byte(doc), "test.yaml", envOf(env))
	if err == nil {
		t.Fatalf("parse succeeded, want problems; got %+v", c)
	}
	if c != nil {
		t.Errorf("parse returned a config with an error")
	}
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T %v, want *Errors", err, err)
	}
	return errs.Problems
}
