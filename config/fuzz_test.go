package config

import (
	"errors"
	"os"
	"testing"
)

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile(examplePath); err == nil {
		f.Add(data)
	}
	for _, doc := range []string{
		"",
		nodeYAML,
		nodeYAML + "    max_concurent: 2\n",
		nodeYAML + "max_body_bytes: 1.5GiB\nupstream: {total: 0, idle: 1h30m}\n",
		"nodes:\n  - &n {url: http://127.0.0.1:1}\n  - {<<: *n, url: http://127.0.0.1:2}\n",
		"queue:\n  classes:\n    batch: {max_wait: 1d}\n    x: null\n",
		"auth:\n  keys:\n    - {name: a, env: HOME}\n    - {sha256: zz}\n",
		"rate_limit: {trusted_proxies: [::/0, 10.0.0.0/33, '']}\n",
		"- a\n---\nb: c\n",
		"a: &a [*a]\n",
		"nodes: [{url: 'http://[::1]:1'}, {url: 'http://%zz'}]\n",
	} {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse returned config %v and error %v; want exactly one", c != nil, err)
		}
		if err != nil {
			checkErrors(t, err)
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("loaded config fails Validate: %v", err)
		}
		if ch := Diff(c, c); !ch.Empty() {
			t.Fatalf("Diff of a config with itself = %+v", ch)
		}
		_ = c.Warnings()
	})
}

// checkErrors checks the shape of an error from Parse: an *Errors with
// problems sorted by line, those without a line last.
func checkErrors(t *testing.T, err error) {
	t.Helper()
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T, want *Errors", err)
	}
	if len(errs.Problems) == 0 {
		t.Fatalf("*Errors without problems")
	}
	last := 0
	for _, p := range errs.Problems {
		if p.Message == "" {
			t.Errorf("problem at %q without a message", p.Path)
		}
		if p.Line < 0 || p.Line > 0 && last == -1 || p.Line > 0 && p.Line < last {
			t.Fatalf("problems out of order:\n%v", err)
		}
		if p.Line == 0 {
			last = -1
		} else {
			last = p.Line
		}
	}
	_ = err.Error()
}
