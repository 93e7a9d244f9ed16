package ratelimit

import "strings"

// modelPatterns is a key's allowed_models list, normalised at start. An empty
// list allows every model.
type modelPatterns struct {
	exact    map[string]bool
	prefixes []string
	all      bool
}

func newModelPatterns(entries []string) modelPatterns {
	p := modelPatterns{all: len(entries) == 0, exact: make(map[string]bool)}
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if prefix, ok := strings.CutSuffix(e, "*"); ok {
			p.prefixes = append(p.prefixes, trimDefaultNamespace(prefix))
			continue
		}
		p.exact[normalizeModel(e)] = true
	}
	return p
}

func (p modelPatterns) match(model string) bool {
	if p.all {
		return true
	}
	name := normalizeModel(model)
	if p.exact[name] {
		return true
	}
	for _, prefix := range p.prefixes {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// normalizeModel returns the form of an Ollama model name that compares
// equal for every spelling Ollama accepts: lower case, without the default
// registry and namespace, and with the ":latest" tag when no tag is given.
func normalizeModel(name string) string {
	n := trimDefaultNamespace(strings.TrimSpace(name))
	// A colon before the last slash belongs to a registry host:port.
	if strings.LastIndexByte(n, ':') <= strings.LastIndexByte(n, '/') {
		n += ":latest"
	}
	return n
}

// trimDefaultNamespace lower-cases name and removes the prefixes Ollama
// implies when a name has none: registry.ollama.ai/ and library/.
func trimDefaultNamespace(name string) string {
	n := strings.ToLower(name)
	n = strings.TrimPrefix(n, "registry.ollama.ai/")
	return strings.TrimPrefix(n, "library/")
}
