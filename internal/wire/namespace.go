package wire

import "strings"

// missingPart is the part name Ollama uses for a part that a name promises
// with a separator but leaves empty, such as the namespace of "/llama3".
const missingPart = "!MISSING!"

// ModelNamespace returns the namespace of a model name of the form
// [host/][namespace/]model[:tag], as Ollama's
// model.ParseName(name).Namespace does (types/model/name.go, Ollama
// 0.17.4). Ollama's /v1/models sends it as owned_by. A name without a
// namespace part is in "library". The part before the last slash but one
// is the host, so "hf.co/foo/bar:Q4_K_M" is in "foo" and a host's port
// is never taken for a tag. An empty namespace part, as in "/llama3",
// gives "!MISSING!", as in Ollama.
func ModelNamespace(name string) string {
	// A colon after the last slash starts the tag, and one before it
	// belongs to the host's port.
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "library"
	}
	namespace := name[:i]
	if j := strings.LastIndexByte(namespace, '/'); j >= 0 {
		namespace = namespace[j+1:]
	}
	if namespace == "" {
		return missingPart
	}
	return namespace
}
