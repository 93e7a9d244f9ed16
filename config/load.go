package config

import (
	"crypto/sha256"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Load reads the YAML file at path and returns the configuration it sets,
// over the defaults and under the LLMPROXY_* variables of the process
// environment. With an empty path it reads only the environment, as
// FromEnv does. A configuration with problems returns an *Errors listing
// all of them, and a file that cannot be read returns the wrapped os
// error.
func Load(path string) (*Config, error) {
	if path == "" {
		return FromEnv(os.Getenv)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseEnv(data, path, os.Getenv)
}

// Parse returns the configuration that the YAML document data sets over the
// defaults. It applies no LLMPROXY_* variables, and reads from the process
// environment only the variables named by auth.keys[].env. Source names
// the document in errors, usually its file path. A configuration with
// problems returns an *Errors listing all of them.
func Parse(data []byte, source string) (*Config, error) {
	return load(data, source, os.Getenv, false)
}

// ParseEnv is Parse with the LLMPROXY_* overrides applied over the file.
// It reads every variable, those of the keys included, through getenv.
func ParseEnv(data []byte, source string, getenv func(string) string) (*Config, error) {
	return load(data, source, getenv, true)
}

// FromEnv returns the configuration of a proxy run without a file: the
// defaults with the LLMPROXY_* variables read through getenv applied.
// LLMPROXY_NODES must name at least one node.
func FromEnv(getenv func(string) string) (*Config, error) {
	return load(nil, "environment", getenv, true)
}

// Validate fills in the values that Load derives (node names from URLs,
// trailing slashes of node URLs, the digests of keys given by env) and
// then checks c as Load does, for a Config built in code. It reads the
// variable of each env key whose digest is not yet known from the process
// environment. Problems carry no lines.
func (c *Config) Validate() error {
	l := newLoader("", os.Getenv)
	return l.finish(c, nil)
}

// loader holds the state of one load.
type loader struct {
	source string
	getenv func(string) string
	// lines maps each path set by the file to its line.
	lines map[string]int
	// envs maps each path set by a variable to the variable's name.
	envs map[string]string
}

func newLoader(source string, getenv func(string) string) *loader {
	return &loader{
		source: source,
		getenv: getenv,
		lines:  map[string]int{},
		envs:   map[string]string{},
	}
}

func load(data []byte, source string, getenv func(string) string, env bool) (*Config, error) {
	cfg := Default()
	l := newLoader(source, getenv)
	decoded, ok := decodeYAML(data, &cfg, l.lines)
	if !ok {
		// The document could not be read, so checking the defaults in its
		// place would only add noise.
		return nil, l.errors(decoded)
	}
	if env {
		l.applyEnv(&cfg)
	}
	if err := l.finish(&cfg, decoded); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// finish completes and validates c. It returns the decoding problems and
// those validation finds, leaving out validation problems on values that
// already failed to decode.
func (l *loader) finish(c *Config, decoded []Problem) error {
	l.complete(c)
	v := &validator{lines: l.lines, envs: l.envs}
	v.validate(c)

	problems := decoded
	for _, p := range v.problems {
		// A value from a variable replaced the file's, so the file's
		// decoding problem does not explain it.
		if p.Env != "" || !reportedUnder(decoded, p.Path) {
			problems = append(problems, p)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return l.errors(problems)
}

// maxProblems bounds the problems reported at once, since a file with
// aliases can repeat one mistake many times.
const maxProblems = 100

func (l *loader) errors(problems []Problem) *Errors {
	sortProblems(problems)
	if n := len(problems); n > maxProblems {
		problems = append(problems[:maxProblems:maxProblems], Problem{
			Message: fmt.Sprintf("%d more problems not shown", n-maxProblems),
		})
	}
	return &Errors{Source: l.source, Problems: problems}
}

// reportedUnder reports whether a problem was already recorded for path
// or a path that contains it.
func reportedUnder(problems []Problem, path string) bool {
	for _, p := range problems {
		if p.Path != "" && isUnder(path, p.Path) {
			return true
		}
	}
	return false
}

// complete fills in derived values: node names, node URLs without their
// trailing slash, and the digests of keys given by env that have none.
func (l *loader) complete(c *Config) {
	for i := range c.Nodes {
		n := &c.Nodes[i]
		u, err := url.Parse(n.URL)
		if err != nil || !strings.Contains(n.URL, "://") || u.Host == "" {
			continue // Validation reports the URL.
		}
		if u.Path == "/" && u.RawQuery == "" && u.Fragment == "" && !u.ForceQuery {
			n.URL = strings.TrimSuffix(n.URL, "/")
		}
		if n.Name == "" {
			n.Name = hostPort(u)
		}
	}
	for i := range c.Auth.Keys {
		k := &c.Auth.Keys[i]
		if k.Env == "" || k.SHA256 != "" || k.envDigest != nil {
			continue
		}
		if secret := l.getenv(k.Env); secret != "" {
			sum := sha256.Sum256([]byte(secret))
			k.envDigest = &sum
		}
	}
}

// hostPort returns the host:port of u, with the scheme's default port
// when u has none.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return u.Host + ":" + port
}
