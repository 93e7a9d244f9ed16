package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const goodSHA = "e5ae8e9946581d38f09ed9a83454ae912998223740a685d66526e0c4d567e581"

// TestParseProblem checks that each invalid document yields exactly one
// problem, at the expected path and line, with a message that explains it.
func TestParseProblem(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		env  map[string]string
		path string
		line int
		msg  string
	}{
		// Decoding.
		{"unknown top key", nodeYAML + "lsten: 127.0.0.1:1\n",
			nil, "lsten", 3, "unknown key (did you mean listen?)"},
		{"unknown key no suggestion", nodeYAML + "frobnicate: 1\n",
			nil, "frobnicate", 3, "unknown key"},
		{"unknown nested key", nodeYAML + "auth:\n  keys:\n    - name: a\n      env: K\n" +
			"      sha: x\n", map[string]string{"K": "x"}, "auth.keys[0].sha", 7,
			"did you mean sha256?"},
		{"duplicate yaml key", nodeYAML + "listen: a:1\nlisten: b:2\n",
			nil, "listen", 4, "duplicate key, first set on line 3"},
		{"syntax error", "nodes:\n  - url: [\n", nil, "", 2, "invalid YAML"},
		{"two documents", nodeYAML + "---\nlisten: a:1\n", nil, "", 3, "more than one YAML document"},
		{"root not mapping", "- a\n", nil, "", 1, "want a mapping"},
		{"root scalar", "hello\n", nil, "", 1, "want a mapping"},
		{"section not mapping", nodeYAML + "upstream: 5\n", nil, "upstream", 3, "want a mapping"},
		{"list not list", "nodes: http://127.0.0.1:1\n", nil, "nodes", 1, "want a list"},
		{"null scalar", nodeYAML + "listen:\n", nil, "listen", 3, "missing value"},
		{"string not int", nodeYAML + "    max_concurrent: four\n",
			nil, "nodes[0].max_concurrent", 3, `want an integer, got "four"`},
		{"float not int", nodeYAML + "    max_concurrent: 2.5\n",
			nil, "nodes[0].max_concurrent", 3, "want an integer"},
		{"int overflow", nodeYAML + "retry:\n  attempts: 99999999999999999999\n",
			nil, "retry.attempts", 4, "out of range"},
		{"yes not bool", nodeYAML + "auth:\n  required: yes\n",
			nil, "auth.required", 4, `want true or false, got "yes"`},
		{"nan weight", nodeYAML + "    weight: .nan\n", nil, "nodes[0].weight", 3, "finite"},
		{"negative uint", nodeYAML + "breaker:\n  consecutive_failures: -1\n",
			nil, "breaker.consecutive_failures", 4, "from 0 to 4294967295"},
		{"plain number duration", nodeYAML + "upstream:\n  connect: 3\n",
			nil, "upstream.connect", 4, "want a duration with a unit such as 3s"},
		{"day duration", nodeYAML + "cache:\n  l2:\n    ttl: 1d\n",
			nil, "cache.l2.ttl", 5, `invalid duration "1d"`},
		{"list duration", nodeYAML + "queue:\n  aging: [1s]\n",
			nil, "queue.aging", 4, "want a duration"},
		{"bad size unit", nodeYAML + "max_body_bytes: 64XB\n",
			nil, "max_body_bytes", 3, `unknown unit "XB"`},
		{"fractional bytes", nodeYAML + "max_body_bytes: 1.5B\n",
			nil, "max_body_bytes", 3, "not a whole number of bytes"},
		{"list size", nodeYAML + "max_body_bytes: [1]\n", nil, "max_body_bytes", 3, "want a size"},
		{"bad merge", nodeYAML + "log:\n  <<: 5\n", nil, "log", 4, "<<: want a mapping"},
		{"self merge", "nodes:\n  - &n {<<: *n, url: http://127.0.0.1:1}\n",
			nil, "nodes[0]", 2, "<<: the mapping merges itself"},

		// Top level.
		{"no nodes", "listen: 127.0.0.1:1\n", nil, "nodes", 0, "no nodes"},
		{"empty nodes", "nodes: []\n", nil, "nodes", 1, "no nodes"},
		{"listen no port", nodeYAML + "listen: localhost\n",
			nil, "listen", 3, "want host:port"},
		{"listen bad port", nodeYAML + "listen: localhost:http\n",
			nil, "listen", 3, `invalid port "http"`},
		{"negative shutdown", nodeYAML + "shutdown_timeout: -1s\n",
			nil, "shutdown_timeout", 3, "must not be negative, got -1s"},
		{"zero body", nodeYAML + "max_body_bytes: 0\n",
			nil, "max_body_bytes", 3, "must be positive"},
		{"zero write timeout", nodeYAML + "write_timeout: 0s\n",
			nil, "write_timeout", 3, "must be positive"},
		{"tiny header limit", nodeYAML + "max_header_bytes: 1KiB\n",
			nil, "max_header_bytes", 3, "must be between 4KiB and 1MiB, got 1024"},

		// Nodes.
		{"missing scheme", "nodes:\n  - url: http://127.0.0.1:1\n  - url: 127.0.0.1:2\n",
			nil, "nodes[1].url", 3, "missing scheme, want http:// or https://"},
		{"ftp scheme", "nodes:\n  - url: ftp://127.0.0.1:1\n",
			nil, "nodes[0].url", 2, `unsupported scheme "ftp"`},
		{"url path", "nodes:\n  - url: http://127.0.0.1:1/api\n",
			nil, "nodes[0].url", 2, `must not have a path, got "/api"`},
		{"url query", "nodes:\n  - url: http://127.0.0.1:1?a=b\n",
			nil, "nodes[0].url", 2, "must not have a query"},
		{"url user", "nodes:\n  - url: http://u:p@127.0.0.1:1\n",
			nil, "nodes[0].url", 2, "user name or password"},
		{"url port zero", "nodes:\n  - url: http://127.0.0.1:0\n",
			nil, "nodes[0].url", 2, `invalid port "0"`},
		{"url missing", "nodes:\n  - name: a\n", nil, "nodes[0].url", 2, "missing"},
		{"url no host", "nodes:\n  - url: http://:11434\n", nil, "nodes[0].url", 2, "missing host"},
		{"duplicate node name",
			"nodes:\n  - {name: a, url: http://127.0.0.1:1}\n  - {name: a, url: http://127.0.0.1:2}\n",
			nil, "nodes[1].name", 3, `duplicate name "a", also nodes[0]`},
		{"duplicate derived name",
			"nodes:\n  - url: http://127.0.0.1:1\n  - {name: 127.0.0.1:1, url: http://127.0.0.1:2}\n",
			nil, "nodes[1].name", 3, "duplicate name"},
		{"duplicate url",
			"nodes:\n  - {name: a, url: http://127.0.0.1:1}\n  - {name: b, url: http://127.0.0.1:1/}\n",
			nil, "nodes[1].url", 3, "same node as nodes[0]"},
		{"duplicate url default port",
			"nodes:\n  - {name: a, url: http://Host}\n  - {name: b, url: http://host:80}\n",
			nil, "nodes[1].url", 3, "duplicate URL"},
		{"name with slash", "nodes:\n  - {name: a/b, url: http://127.0.0.1:1}\n",
			nil, "nodes[0].name", 2, `invalid name "a/b"`},
		{"max_concurrent zero", nodeYAML + "    max_concurrent: 0\n",
			nil, "nodes[0].max_concurrent", 3, "must be at least 1, got 0"},
		{"weight zero", nodeYAML + "    weight: 0\n",
			nil, "nodes[0].weight", 3, "must be positive"},

		// Sections.
		{"zero connect", nodeYAML + "upstream:\n  connect: 0s\n",
			nil, "upstream.connect", 4, "must be positive"},
		{"negative total", nodeYAML + "upstream:\n  total: -1s\n",
			nil, "upstream.total", 4, "must not be negative"},
		{"zero discovery", nodeYAML + "discovery:\n  interval: 0\n",
			nil, "discovery.interval", 4, "must be positive"},
		{"origin trailing slash", nodeYAML + "cors:\n  allowed_origins: [\"https://a.example/\"]\n",
			nil, "cors.allowed_origins[0]", 4, "without a path or trailing slash"},
		{"origin no scheme", nodeYAML + "cors:\n  allowed_origins:\n    - a.example\n",
			nil, "cors.allowed_origins[0]", 5, "want scheme://host"},
		{"zero threshold", nodeYAML + "health:\n  healthy_threshold: 0\n",
			nil, "health.healthy_threshold", 4, "must be at least 1"},
		{"zero fail timeout", nodeYAML + "health:\n  fail_timeout: 0s\n",
			nil, "health.fail_timeout", 4, "must be positive"},
		{"ejection percent above 100", nodeYAML + "health:\n  max_ejection_percent: 150\n",
			nil, "health.max_ejection_percent", 4, "must be from 0 to 100, got 150"},
		{"ratio above one", nodeYAML + "breaker:\n  failure_ratio: 1.5\n",
			nil, "breaker.failure_ratio", 4, "above 0 and at most 1"},
		{"zero attempts", nodeYAML + "retry:\n  attempts: 0\n",
			nil, "retry.attempts", 4, "must be at least 1"},
		{"max backoff below backoff", nodeYAML + "retry:\n  backoff: 2s\n  max_backoff: 1s\n",
			nil, "retry.max_backoff", 5, "must be at least retry.backoff (2s), got 1s"},
		{"duplicate ensure", nodeYAML + "models:\n  ensure: [llama3, \"llama3:latest\"]\n",
			nil, "models.ensure[1]", 4, "duplicate model"},
		{"empty ensure", nodeYAML + "models:\n  ensure: [\"\"]\n",
			nil, "models.ensure[0]", 4, "missing model name"},
		{"unknown policy", nodeYAML + "balancer:\n  policy: least_con\n",
			nil, "balancer.policy", 4, `unknown value "least_con" (did you mean least_conn?)`},
		{"affinity below one", nodeYAML + "balancer:\n  affinity_load_factor: 0.5\n",
			nil, "balancer.affinity_load_factor", 4, "must be at least 1"},
		{"negative aging", nodeYAML + "queue:\n  aging: -1s\n",
			nil, "queue.aging", 4, "must not be negative"},
		{"unknown class", nodeYAML + "queue:\n  classes:\n    bach:\n      max_length: 5\n",
			nil, "queue.classes.bach", 5, "unknown class (did you mean batch?)"},
		{"zero max wait", nodeYAML + "queue:\n  classes:\n    batch: {max_wait: 0s}\n",
			nil, "queue.classes.batch.max_wait", 5, "must be positive"},
		{"negative max length", nodeYAML + "queue:\n  classes:\n    batch: {max_length: -1}\n",
			nil, "queue.classes.batch.max_length", 5, "must not be negative"},
		{"negative per address", nodeYAML + "rate_limit:\n  per_address: -1\n",
			nil, "rate_limit.per_address", 4, "must not be negative"},
		{"burst zero with rate", nodeYAML + "rate_limit:\n  burst: 0\n",
			nil, "rate_limit.burst", 4, "must be at least 1 when per_address is set"},
		{"bad cidr", nodeYAML + "rate_limit:\n  trusted_proxies: [10.0.0.0/33]\n",
			nil, "rate_limit.trusted_proxies[0]", 4, `invalid CIDR "10.0.0.0/33"`},
		{"bad address", nodeYAML + "rate_limit:\n  trusted_proxies:\n    - proxy.local\n",
			nil, "rate_limit.trusted_proxies[0]", 5, `invalid address "proxy.local"`},
		{"zero token estimate", nodeYAML + "rate_limit:\n  default_token_estimate: 0\n",
			nil, "rate_limit.default_token_estimate", 4, "must be at least 1"},
		{"redis bad addr", nodeYAML + "redis:\n  addr: redis\n",
			nil, "redis.addr", 4, "want host:port"},
		{"redis negative db", nodeYAML + "redis:\n  db: -1\n",
			nil, "redis.db", 4, "must not be negative"},
		{"unknown generate", nodeYAML + "cache:\n  generate: always\n",
			nil, "cache.generate", 4, "want deterministic or never"},
		{"zero l1", nodeYAML + "cache:\n  l1:\n    max_bytes: 0\n",
			nil, "cache.l1.max_bytes", 5, "must be positive"},
		{"unknown log format", nodeYAML + "log:\n  format: xml\n",
			nil, "log.format", 4, "want text or json"},
		{"unknown log level", nodeYAML + "log:\n  level: warning\n",
			nil, "log.level", 4, `unknown value "warning" (did you mean warn?)`},
		{"admin same listen", nodeYAML + "admin:\n  listen: 127.0.0.1:11434\n",
			nil, "admin.listen", 4, "must differ from listen"},
		{"admin bad listen", nodeYAML + "admin:\n  listen: \":x\"\n",
			nil, "admin.listen", 4, "invalid port"},

		// Keys.
		{"key missing name", nodeYAML + "auth:\n  keys:\n    - sha256: " + goodSHA + "\n",
			nil, "auth.keys[0].name", 5, "missing"},
		{"key both", nodeYAML + "auth:\n  keys:\n    - name: a\n      sha256: " + goodSHA +
			"\n      env: K\n", map[string]string{"K": "x"}, "auth.keys[0]", 5,
			"sets both sha256 and env"},
		{"key neither", nodeYAML + "auth:\n  keys:\n    - name: a\n",
			nil, "auth.keys[0]", 5, "sets neither sha256 nor env"},
		{"sha256 short", nodeYAML + "auth:\n  keys:\n    - name: a\n      sha256: abc\n",
			nil, "auth.keys[0].sha256", 6, "want 64 hex digits, the SHA-256 of the key, got 3"},
		{"sha256 not hex", nodeYAML + "auth:\n  keys:\n    - name: a\n      sha256: " +
			strings.Repeat("g", 64) + "\n", nil, "auth.keys[0].sha256", 6,
			"non-hex character at position 1"},
		{"key env empty", nodeYAML + "auth:\n  keys:\n    - name: a\n      env: APP_KEY\n",
			map[string]string{}, "auth.keys[0].env", 6, "APP_KEY is empty or unset"},
		{"duplicate key name", nodeYAML + "auth:\n  keys:\n    - {name: a, sha256: " + goodSHA +
			"}\n    - {name: a, env: K}\n", map[string]string{"K": "x"}, "auth.keys[1].name", 6,
			`duplicate name "a", also auth.keys[0]`},
		{"same key twice", nodeYAML + "auth:\n  keys:\n    - {name: a, sha256: " + goodSHA +
			"}\n    - {name: b, env: K}\n", map[string]string{"K": "replace-this-example-key"},
			"auth.keys[1]", 6, "same key as auth.keys[0]"},
		{"key unknown priority", nodeYAML + "auth:\n  keys:\n    - name: a\n      env: K\n" +
			"      priority: hi\n", map[string]string{"K": "x"}, "auth.keys[0].priority", 7,
			`unknown value "hi"`},
		{"key negative tokens", nodeYAML + "auth:\n  keys:\n    - name: a\n      env: K\n" +
			"      tokens_per_minute: -5\n", map[string]string{"K": "x"},
			"auth.keys[0].tokens_per_minute", 7, "must not be negative, got -5"},
		{"key rate without burst", nodeYAML + "auth:\n  keys:\n    - name: a\n      env: K\n" +
			"      requests_per_second: 2\n", map[string]string{"K": "x"},
			"auth.keys[0].burst", 5, "at least 1 when requests_per_second is set"},
		{"key empty model", nodeYAML + "auth:\n  keys:\n    - name: a\n      env: K\n" +
			"      allowed_models: [\"a b\"]\n", map[string]string{"K": "x"},
			"auth.keys[0].allowed_models[0]", 7, "must not contain spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := problemsOf(t, tt.doc, tt.env)
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want 1:\n%v", len(ps), (&Errors{Problems: ps}).Error())
			}
			p := ps[0]
			if p.Path != tt.path {
				t.Errorf("path = %q, want %q", p.Path, tt.path)
			}
			if p.Line != tt.line {
				t.Errorf("line = %d, want %d (%s)", p.Line, tt.line, p)
			}
			if !strings.Contains(p.Message, tt.msg) {
				t.Errorf("message = %q, want it to contain %q", p.Message, tt.msg)
			}
		})
	}
}

// TestProblemExamplesAreValid checks the message for a wrong duration or
// size: it must explain the problem, and each value it gives as an example
// must load without problems when written for the same setting.
func TestProblemExamplesAreValid(t *testing.T) {
	tests := []struct {
		name     string
		key      string
		value    string
		msg      string
		examples []string
		// absent is text that the message must not contain, such as an
		// example that would itself be rejected.
		absent string
	}{
		{"exponent", "shutdown_timeout", "1e3",
			"got the plain number 1e3", []string{"1000s", "1000ms"}, "1e3s"},
		{"hexadecimal", "shutdown_timeout", "0x10",
			"got the plain number 0x10", []string{"16s", "16ms"}, "0x10s"},
		{"digit separator", "shutdown_timeout", "1_000",
			"got the plain number 1_000", []string{"1000s", "1000ms"}, "1_000s"},
		{"fraction", "read_timeout", "1.5",
			"got the plain number 1.5", []string{"1.5s", "1.5ms"}, ""},
		{"too large in seconds", "read_timeout", "1e10",
			"got the plain number 1e10", []string{"10000000000ms"}, "10000000000s"},
		{"negative for positive", "read_timeout", "-30",
			"must not be negative", []string{"90s", "5m"}, "-30s"},
		{"negative for non-negative", "shutdown_timeout", "-30",
			"must not be negative", []string{"90s", "5m"}, "-30s"},
		{"below a nanosecond", "read_timeout", "1e-12",
			"got the plain number 1e-12", []string{"90s", "5m"}, "1e-12s"},
		{"out of range", "read_timeout", "9999999h",
			`duration "9999999h" is out of range`, []string{"2562047h"}, "want a number with a unit"},
		{"negative out of range", "read_timeout", "-9999999h",
			"must not be negative", nil, "want a number with a unit"},
		{"plain number out of range", "read_timeout", "1e20",
			"1e20 is out of range in seconds and in milliseconds", []string{"2562047h"}, "1e20s"},
		{"size of wrong kind", "max_header_bytes", "[1]",
			"want a size", []string{"1048576", "64KiB"}, "64MiB"},
		{"size with exponent", "max_header_bytes", "1e6",
			`invalid size "1e6": malformed number`, []string{"1048576", "512k", "64KiB"}, "unknown unit"},
		{"size with separator", "max_body_bytes", "1_000k",
			`invalid size "1_000k": malformed number`, []string{"1048576", "512k", "64KiB"}, "unknown unit"},
		{"negative size", "max_header_bytes", "-1MiB",
			`invalid size "-1MiB"`, []string{"1048576", "512k", "64KiB"}, "64MiB"},
		{"size beyond int64", "max_body_bytes", "18446744073709551615",
			"out of range, larger than 9223372036854775807 bytes", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := problemsOf(t, nodeYAML+tt.key+": "+tt.value+"\n", nil)
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want 1:\n%v", len(ps), (&Errors{Problems: ps}).Error())
			}
			msg := ps[0].Message
			if !strings.Contains(msg, tt.msg) {
				t.Errorf("message = %q, want it to contain %q", msg, tt.msg)
			}
			if tt.absent != "" && strings.Contains(msg, tt.absent) {
				t.Errorf("message = %q, want it without %q", msg, tt.absent)
			}
			for _, example := range tt.examples {
				if !strings.Contains(msg, example) {
					t.Errorf("message = %q, want it to give the example %s", msg, example)
				}
				doc := nodeYAML + tt.key + ": " + example + "\n"
				if _, err := ParseEnv([]byte(doc), "test.yaml", envOf(nil)); err != nil {
					t.Errorf("example %s is rejected: %v", example, err)
				}
			}
		})
	}
}

// TestNegativeDurationsRejected checks that validation rejects -1s for
// every duration setting. The decoder's message "must not be negative" for
// any duration relies on it.
func TestNegativeDurationsRejected(t *testing.T) {
	for _, path := range durationPaths(t, reflect.TypeFor[Config](), "") {
		t.Run(path, func(t *testing.T) {
			// Each key of path opens one more level of indentation.
			var doc strings.Builder
			doc.WriteString(nodeYAML)
			keys := strings.Split(path, ".")
			for i, key := range keys {
				doc.WriteString(strings.Repeat("  ", i) + key + ":")
				if i < len(keys)-1 {
					doc.WriteString("\n")
				}
			}
			doc.WriteString(" -1s\n")
			ps := problemsOf(t, doc.String(), nil)
			found := false
			for _, p := range ps {
				found = found || p.Path == path
			}
			if !found {
				t.Errorf("no problem at %s for -1s, got %v", path, ps)
			}
		})
	}
}

// durationPaths returns the YAML path of every time.Duration under typ. A
// map stands for its entry batch, the one key that every map of durations
// in Config accepts.
func durationPaths(t *testing.T, typ reflect.Type, prefix string) []string {
	t.Helper()
	var paths []string
	for _, f := range reflect.VisibleFields(typ) {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := prefix + name
		switch ft := f.Type; {
		case ft == reflect.TypeFor[time.Duration]():
			paths = append(paths, path)
		case ft.Kind() == reflect.Struct:
			paths = append(paths, durationPaths(t, ft, path+".")...)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			paths = append(paths, durationPaths(t, ft.Elem(), path+"."+ClassBatch+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			if inner := durationPaths(t, ft.Elem(), ""); len(inner) > 0 {
				t.Fatalf("%s holds durations %v in a list, which this test does not reach", path, inner)
			}
		}
	}
	return paths
}

func TestUnknownKeySuggestion(t *testing.T) {
	doc := "listen: 127.0.0.1:11434\nlog:\n  level: info\n" +
		"nodes:\n  - name: gpu1\n    url: http://127.0.0.1:11435\n    max_concurent: 2\n"
	ps := problemsOf(t, doc, nil)
	if len(ps) != 1 {
		t.Fatalf("got %d problems, want 1: %v", len(ps), ps)
	}
	want := "line 7: nodes[0].max_concurent: unknown key (did you mean max_concurrent?)"
	if got := ps[0].String(); got != want {
		t.Errorf("problem = %q, want %q", got, want)
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	doc := "" +
		"listen: nowhere\n" + // 1
		"nodes:\n" + // 2
		"  - url: http://127.0.0.1:1\n" + // 3
		"  - url: 127.0.0.1:2\n" + // 4
		"    max_concurent: 2\n" + // 5
		"upstream:\n" + // 6
		"  idle: 30\n" + // 7
		"log:\n" + // 8
		"  format: xml\n" // 9
	ps := problemsOf(t, doc, nil)
	want := []struct {
		line int
		path string
	}{
		{1, "listen"},
		{4, "nodes[1].url"},
		{5, "nodes[1].max_concurent"},
		{7, "upstream.idle"},
		{9, "log.format"},
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(want), (&Errors{Problems: ps}).Error())
	}
	for i, w := range want {
		if ps[i].Line != w.line || ps[i].Path != w.path {
			t.Errorf("problem %d = line %d %s, want line %d %s",
				i, ps[i].Line, ps[i].Path, w.line, w.path)
		}
	}
}

func TestErrorsFormat(t *testing.T) {
	tests := []struct {
		name string
		errs *Errors
		want string
	}{
		{"one problem", &Errors{Source: "a.yaml", Problems: []Problem{
			{Path: "listen", Line: 3, Message: "bad"},
		}}, "a.yaml: line 3: listen: bad"},
		{"several problems", &Errors{Source: "a.yaml", Problems: []Problem{
			{Path: "listen", Line: 3, Message: "bad"},
			{Path: "nodes", Message: "none"},
		}}, "a.yaml: 2 problems:\nline 3: listen: bad\nnodes: none"},
		{"env problem", &Errors{Source: "environment", Problems: []Problem{
			{Path: "nodes[0].url", Env: "LLMPROXY_NODES", Message: "bad"},
		}}, "environment: env LLMPROXY_NODES: nodes[0].url: bad"},
		{"no source no path", &Errors{Problems: []Problem{{Message: "bad"}}}, "config: bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.errs.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSortProblemsLinesFirst(t *testing.T) {
	ps := []Problem{
		{Path: "b", Line: 0},
		{Path: "z", Line: 9},
		{Path: "a", Line: 0},
		{Path: "y", Line: 2},
	}
	sortProblems(ps)
	var got []string
	for _, p := range ps {
		got = append(got, p.Path)
	}
	if strings.Join(got, ",") != "y,z,a,b" {
		t.Errorf("order = %v, want y,z,a,b", got)
	}
}

func TestDecodeProblemHidesValidation(t *testing.T) {
	// The node list failed to decode; "no nodes" would only repeat that.
	ps := problemsOf(t, "nodes: {url: http://127.0.0.1:1}\n", nil)
	if len(ps) != 1 || ps[0].Path != "nodes" || !strings.Contains(ps[0].Message, "want a list") {
		t.Errorf("problems = %v, want only nodes: want a list", ps)
	}
}

func TestAliasBombStops(t *testing.T) {
	// Each level merges the one below ten times, so log expands to 10^8
	// entries unless the decoder stops early.
	var b strings.Builder
	b.WriteString(nodeYAML + "x0: &x0 {level: info}\n")
	for i := 1; i <= 8; i++ {
		fmt.Fprintf(&b, "x%d: &x%d {<<: [", i, i)
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*x%d", i-1)
		}
		b.WriteString("]}\n")
	}
	b.WriteString("log: *x8\n")

	_, err := ParseEnv([]byte(b.String()), "bomb.yaml", envOf(nil))
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error = %v, want *Errors", err)
	}
	if !strings.Contains(err.Error(), "expands to more than") {
		t.Errorf("error does not name the expansion limit:\n%.2000s", err)
	}
	if len(errs.Problems) > maxProblems+1 {
		t.Errorf("got %d problems, want at most %d", len(errs.Problems), maxProblems+1)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load error = %v, want one wrapping os.ErrNotExist", err)
	}
}
