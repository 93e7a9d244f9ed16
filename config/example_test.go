package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const examplePath = "../config.example.yaml"

// clearEnv unsets the LLMPROXY_* variables for one test, so that the
// environment of the machine cannot change what Load returns.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, o := range envOverrides {
		t.Setenv(o.name, "")
	}
}

func TestExampleLoads(t *testing.T) {
	clearEnv(t)
	c, err := Load(examplePath)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(c.Nodes) != 2 {
		t.Fatalf("got %d nodes, want 2", len(c.Nodes))
	}
	for _, n := range c.Nodes {
		if !strings.HasPrefix(n.URL, "http://127.0.0.1:") {
			t.Errorf("node %s at %s, want a node on 127.0.0.1", n.Name, n.URL)
		}
	}
}

func TestExampleMatchesDefaults(t *testing.T) {
	clearEnv(t)
	c, err := Load(examplePath)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	// Apart from the nodes and the example key, the example writes out
	// the defaults.
	want := Default()
	ch := Diff(&want, c)
	if !slices.Equal(ch.Settings, []string{"auth.keys"}) {
		t.Errorf("settings differing from Default: %v, want only auth.keys", ch.Settings)
	}
}

func TestExampleSetsEveryKey(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	lines := map[string]int{}
	if ps, ok := decodeYAML(data, &cfg, lines); !ok || len(ps) > 0 {
		t.Fatalf("decode: ok=%v problems=%v", ok, ps)
	}
	// A key sets exactly one of sha256 and env, so the example shows env
	// in a comment.
	skip := map[string]bool{"auth.keys[0].env": true}
	paths := leafPaths(reflect.TypeFor[Config](), "")
	if len(paths) < 60 {
		t.Fatalf("found %d settings in Config, want about 70: %v", len(paths), paths)
	}
	for _, path := range paths {
		if _, ok := lines[path]; !ok && !skip[path] {
			t.Errorf("%s missing from %s", path, filepath.Base(examplePath))
		}
	}
}

// leafPaths lists the YAML path of every setting of t: list elements as
// [0] and queue classes by name.
func leafPaths(t reflect.Type, path string) []string {
	switch {
	case t.Kind() == reflect.Struct && t != durationType:
		var out []string
		fields, names := yamlFields(t)
		for _, name := range names {
			out = append(out, leafPaths(fields[name].Type, joinPath(path, name))...)
		}
		return out
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		return leafPaths(t.Elem(), path+"[0]")
	case t.Kind() == reflect.Map:
		var out []string
		for _, class := range Classes {
			out = append(out, leafPaths(t.Elem(), joinPath(path, class))...)
		}
		return out
	}
	return []string{path}
}
