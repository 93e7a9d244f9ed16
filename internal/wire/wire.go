// Package wire contains helpers for Ollama's wire format that several
// packages share. They normalize model names, order versions and build the
// error bodies of the Ollama, OpenAI and Anthropic routes.
package wire

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// NormalizeModel returns the name under which Ollama lists a model. It trims
// spaces, drops the "registry.ollama.ai/" and "library/" prefixes and adds
// ":latest" when the last path element has no tag, so "llama3",
// "llama3:latest" and "registry.ollama.ai/library/llama3" compare equal.
// Case is kept, so the result can be shown as the client or node wrote
// it. Compare names with ModelKey.
func NormalizeModel(name string) string {
	name = strings.TrimSpace(name)
	name = strings.TrimPrefix(name, "registry.ollama.ai/")
	name = strings.TrimPrefix(name, "library/")
	if name == "" {
		return ""
	}
	last := name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		last = name[i+1:]
	}
	if !strings.Contains(last, ":") {
		name += ":latest"
	}
	return name
}

// ModelKey returns the key under which model names compare: the
// normalized name in lower case, because Ollama matches model names
// without regard to case.
func ModelKey(name string) string {
	return NormalizeModel(strings.ToLower(name))
}

// CompareVersions compares two Ollama version strings such as "0.25.0" and
// "0.25.0-rc0-10-gf63eea3d2" and returns -1, 0 or 1. Numeric parts compare
// as numbers. A suffix after "-" or "+" sorts before the release itself, as
// a pre-release does in semantic versioning, and two suffixes compare as
// strings. An empty or unparsable version sorts first.
func CompareVersions(a, b string) int {
	ca, pa := splitVersion(a)
	cb, pb := splitVersion(b)
	for i := 0; i < 3; i++ {
		if ca[i] != cb[i] {
			if ca[i] < cb[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa == pb:
		return 0
	case pa == "":
		return 1
	case pb == "":
		return -1
	case pa < pb:
		return -1
	default:
		return 1
	}
}

func splitVersion(v string) (core [3]int, pre string) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v, pre = v[:i], v[i+1:]
	}
	for i, part := range strings.SplitN(v, ".", 3) {
		n, err := strconv.Atoi(part)
		if err != nil {
			return [3]int{-1, -1, -1}, pre
		}
		core[i] = n
	}
	return core, pre
}

// OllamaError returns the JSON body Ollama sends with an error:
// {"error":"message"}.
func OllamaError(msg string) []byte {
	b := make([]byte, 0, len(msg)+16)
	b = append(b, `{"error":`...)
	b = appendJSONString(b, msg)
	return append(b, '}')
}

// OllamaAuthError returns the body of a 401 in Ollama's shape, with the
// message also in "status". The Ollama Go client decodes a 401 body into
// its AuthorizationError, whose Error returns that field. Without it, the
// client prints a generic message that points at the server's logs.
func OllamaAuthError(msg string) []byte {
	b := make([]byte, 0, 2*len(msg)+28)
	b = append(b, `{"error":`...)
	b = appendJSONString(b, msg)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, msg)
	return append(b, '}')
}

// AppendProgress appends a progress line of a model operation, such as a
// pull, without its newline: {"status":...,"digest":...,"total":N,
// "completed":N}. As in Ollama, an empty digest and a zero total or
// completed are left out.
func AppendProgress(b []byte, status, digest string, total, completed int64) []byte {
	b = append(b, `{"status":`...)
	b = appendJSONString(b, status)
	if digest != "" {
		b = append(b, `,"digest":`...)
		b = appendJSONString(b, digest)
	}
	if total != 0 {
		b = append(b, `,"total":`...)
		b = strconv.AppendInt(b, total, 10)
	}
	if completed != 0 {
		b = append(b, `,"completed":`...)
		b = strconv.AppendInt(b, completed, 10)
	}
	return append(b, '}')
}

// OpenAIError returns the JSON body of an error on the OpenAI-compatible
// routes, in the shape Ollama and OpenAI use:
// {"error":{"message":...,"type":...,"param":null,"code":null}}.
func OpenAIError(msg, typ string) []byte {
	b := make([]byte, 0, len(msg)+80)
	b = append(b, `{"error":{"message":`...)
	b = appendJSONString(b, msg)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, typ)
	return append(b, `,"param":null,"code":null}}`...)
}

// OpenAIErrorType returns the OpenAI error type for an HTTP status.
func OpenAIErrorType(status int) string {
	switch {
	case status == 401:
		return "authentication_error"
	case status == 403:
		return "permission_error"
	case status == 404:
		return "not_found_error"
	case status == 429:
		return "rate_limit_error"
	case status >= 400 && status < 500:
		// Every other client error, such as 400, 405, 408, 413 or 431.
		return "invalid_request_error"
	default:
		return "api_error"
	}
}

// AnthropicError returns the JSON body of an error on the Anthropic-compatible
// route, in the shape of Ollama's anthropic.ErrorResponse:
// {"type":"error","error":{"type":...,"message":...},"request_id":...}.
// An empty requestID is left out, which also gives the data of a stream's
// error event (Ollama's anthropic.StreamErrorEvent has no request_id).
func AnthropicError(msg, typ, requestID string) []byte {
	b := make([]byte, 0, len(msg)+len(requestID)+80)
	b = append(b, `{"type":"error","error":{"type":`...)
	b = appendJSONString(b, typ)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, msg)
	b = append(b, '}')
	if requestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendJSONString(b, requestID)
	}
	return append(b, '}')
}

// AnthropicErrorType returns the Anthropic error type for an HTTP status.
// It follows Ollama's anthropic.NewError, except that a client error
// without a type of its own, such as 405 or 408, gets invalid_request_error
// where Ollama sends api_error. Anthropic's API documentation (errors page)
// gives invalid_request_error to every 4xx status that it does not list,
// and api_error means a fault of the server.
func AnthropicErrorType(status int) string {
	switch status {
	case 400:
		return "invalid_request_error"
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 413:
		return "request_too_large"
	case 429:
		return "rate_limit_error"
	case 503, 529:
		return "overloaded_error"
	}
	if status >= 400 && status < 500 {
		return "invalid_request_error"
	}
	return "api_error"
}

// appendJSONString appends s as a JSON string. It does not use
// strconv.AppendQuote because that writes \x escapes for control bytes,
// which JSON lacks. Control bytes are escaped here as \u00XX.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
		case c >= utf8.RuneSelf:
			// A message may quote a client's bytes, such as a model name,
			// that are not UTF-8. As encoding/json does, each invalid
			// byte becomes U+FFFD, so the body stays valid JSON.
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"')
}
