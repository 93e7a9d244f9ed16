package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFromEnvSidecar(t *testing.T) {
	c, err := FromEnv(envOf(map[string]string{
		EnvNodes:  " http://a:11434, https://b:11434 ,",
		EnvListen: "0.0.0.0:8080",
	}))
	if err != nil {
		t.Fatalf("FromEnv: %v", err)
	}
	want := []Node{
		{Name: "a:11434", URL: "http://a:11434", MaxConcurrent: 4, Weight: 1},
		{Name: "b:11434", URL: "https://b:11434", MaxConcurrent: 4, Weight: 1},
	}
	if len(c.Nodes) != len(want) {
		t.Fatalf("nodes = %+v, want %+v", c.Nodes, want)
	}
	for i := range want {
		if c.Nodes[i] != want[i] {
			t.Errorf("nodes[%d] = %+v, want %+v", i, c.Nodes[i], want[i])
		}
	}
	if c.Listen != "0.0.0.0:8080" {
		t.Errorf("listen = %q, want 0.0.0.0:8080", c.Listen)
	}
	if c.Upstream.FirstByte != Default().Upstream.FirstByte {
		t.Errorf("upstream.first_byte = %v, want the default", c.Upstream.FirstByte)
	}
}

func TestFromEnvProblems(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		path string
		from string
		msg  string
	}{
		{"no nodes", nil, "nodes", "", "set LLMPROXY_NODES"},
		{"only commas", map[string]string{EnvNodes: ", ,"}, "nodes", EnvNodes, "no nodes"},
		{"bad node", map[string]string{EnvNodes: "http://a:1,b:2"},
			"nodes[1].url", EnvNodes, "missing scheme"},
		{"bad listen", map[string]string{EnvNodes: "http://a:1", EnvListen: "8080"},
			"listen", EnvListen, "want host:port"},
		{"bad log level", map[string]string{EnvNodes: "http://a:1", EnvLogLevel: "DEBUG"},
			"log.level", EnvLogLevel, "unknown value"},
		{"bad redis addr", map[string]string{EnvNodes: "http://a:1", EnvRedisAddr: "redis"},
			"redis.addr", EnvRedisAddr, "want host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FromEnv(envOf(tt.env))
			errs, ok := err.(*Errors)
			if !ok {
				t.Fatalf("error = %v, want *Errors", err)
			}
			if len(errs.Problems) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(errs.Problems), errs)
			}
			p := errs.Problems[0]
			if p.Path != tt.path || p.Env != tt.from || p.Line != 0 {
				t.Errorf("problem at %q from %q line %d, want %q from %q line 0",
					p.Path, p.Env, p.Line, tt.path, tt.from)
			}
			if !strings.Contains(p.Message, tt.msg) {
				t.Errorf("message = %q, want it to contain %q", p.Message, tt.msg)
			}
			if errs.Source != "environment" {
				t.Errorf("source = %q, want environment", errs.Source)
			}
		})
	}
}

// fileYAML sets every value that a variable can override.
const fileYAML = `listen: 127.0.0.1:9000
nodes:
  - url: http://127.0.0.1:11435
redis:
  addr: 127.0.0.1:6379
  password: from-file
admin:
  token: from-file
log:
  level: warn
`

func TestEnvOverridesFile(t *testing.T) {
	tests := []struct {
		name  string
		value string
		get   func(*Config) string
		file  string
	}{
		{EnvListen, "127.0.0.1:9999", func(c *Config) string { return c.Listen }, "127.0.0.1:9000"},
		{EnvNodes, "http://127.0.0.1:2", func(c *Config) string { return c.Nodes[0].URL },
			"http://127.0.0.1:11435"},
		{EnvRedisAddr, "127.0.0.1:6380", func(c *Config) string { return c.Redis.Addr },
			"127.0.0.1:6379"},
		{EnvRedisPassword, "from-env", func(c *Config) string { return c.Redis.Password },
			"from-file"},
		{EnvAdminToken, "from-env", func(c *Config) string { return c.Admin.Token }, "from-file"},
		{EnvLogLevel, "debug", func(c *Config) string { return c.Log.Level }, "warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseEnv([]byte(fileYAML), "f.yaml", envOf(map[string]string{tt.name: tt.value}))
			if err != nil {
				t.Fatalf("ParseEnv: %v", err)
			}
			if got := tt.get(c); got != tt.value {
				t.Errorf("with %s set: %q, want %q", tt.name, got, tt.value)
			}
			c, err = ParseEnv([]byte(fileYAML), "f.yaml", envOf(map[string]string{tt.name: ""}))
			if err != nil {
				t.Fatalf("ParseEnv: %v", err)
			}
			if got := tt.get(c); got != tt.file {
				t.Errorf("with %s empty: %q, want the file's %q", tt.name, got, tt.file)
			}
		})
	}
}

func TestParseIgnoresEnvOverrides(t *testing.T) {
	t.Setenv(EnvListen, "127.0.0.1:9999")
	c, err := Parse([]byte(fileYAML), "f.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.Listen != "127.0.0.1:9000" {
		t.Errorf("listen = %q, want the file's 127.0.0.1:9000", c.Listen)
	}
}

func TestEnvProblemDropsFileLine(t *testing.T) {
	// The file's node list starts on line 2; the problem is in the value
	// from the variable, so it names the variable instead.
	ps := problemsOf(t, fileYAML, map[string]string{EnvNodes: "127.0.0.1:1"})
	if len(ps) != 1 {
		t.Fatalf("got %d problems, want 1: %v", len(ps), ps)
	}
	want := "env LLMPROXY_NODES: nodes[0].url: missing scheme, want http:// or https://"
	if got := ps[0].String(); got != want {
		t.Errorf("problem = %q, want %q", got, want)
	}
}

func TestLoadAppliesEnv(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "llmproxy.yaml")
	if err := os.WriteFile(path, []byte(fileYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvLogLevel, "error")
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Log.Level != "error" {
		t.Errorf("log.level = %q, want error from %s", c.Log.Level, EnvLogLevel)
	}
}

func TestLoadWithoutFileReadsEnv(t *testing.T) {
	clearEnv(t)
	t.Setenv(EnvNodes, "http://127.0.0.1:11435")
	c, err := Load("")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(c.Nodes) != 1 || c.Nodes[0].Name != "127.0.0.1:11435" {
		t.Errorf("nodes = %+v, want one named 127.0.0.1:11435", c.Nodes)
	}
}

func TestKeyFromEnv(t *testing.T) {
	doc := nodeYAML + "auth:\n  keys:\n    - name: app\n      env: APP_KEY\n"
	c, err := ParseEnv([]byte(doc), "f.yaml", envOf(map[string]string{"APP_KEY": "s3cret"}))
	if err != nil {
		t.Fatalf("ParseEnv: %v", err)
	}
	k := c.Auth.Keys[0]
	if !k.Matches("s3cret") {
		t.Errorf("key does not match the variable's value")
	}
	if k.Matches("other") {
		t.Errorf("key matches another secret")
	}
	if k.Priority != ClassStandard {
		t.Errorf("priority = %q, want the default %q", k.Priority, ClassStandard)
	}
}
