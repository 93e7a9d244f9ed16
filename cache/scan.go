package cache

// span is the byte range [start, end) of one JSON value inside a body.
type span struct{ start, end int }

// The scanners below find where values sit in a body that fastjson has
// already parsed, so that an upstream body can be rebuilt with one value
// replaced and every other byte kept. They return false on any input they
// cannot follow instead of trusting that input.

// memberSpan returns the span of the value of the top-level member whose
// key is written exactly as name (without escapes) in the object body.
func memberSpan(body []byte, name string) (span, bool) {
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return span{}, false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return span{}, false
	}
	for i < len(body) {
		if body[i] != '"' {
			return span{}, false
		}
		keyEnd := skipString(body, i)
		if keyEnd < 0 {
			return span{}, false
		}
		key := body[i+1 : keyEnd-1]
		i = skipSpace(body, keyEnd)
		if i >= len(body) || body[i] != ':' {
			return span{}, false
		}
		start := skipSpace(body, i+1)
		end := skipValue(body, start)
		if end < 0 {
			return span{}, false
		}
		if string(key) == name {
			return span{start, end}, true
		}
		i = skipSpace(body, end)
		if i >= len(body) || body[i] != ',' {
			return span{}, false
		}
		i = skipSpace(body, i+1)
	}
	return span{}, false
}

// elementSpans returns the spans of the elements of the array at s.
func elementSpans(body []byte, s span) ([]span, bool) {
	if s.start >= len(body) || body[s.start] != '[' {
		return nil, false
	}
	var out []span
	i := skipSpace(body, s.start+1)
	if i < len(body) && body[i] == ']' {
		return out, true
	}
	for i < s.end {
		end := skipValue(body, i)
		if end < 0 {
			return nil, false
		}
		out = append(out, span{i, end})
		i = skipSpace(body, end)
		if i >= len(body) {
			return nil, false
		}
		if body[i] == ']' {
			return out, true
		}
		if body[i] != ',' {
			return nil, false
		}
		i = skipSpace(body, i+1)
	}
	return nil, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string that opens at b[i],
// or -1 when it is not closed.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index just past the value that starts at b[i], or
// -1 when there is none.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		return skipContainer(b, i)
	case ',', ':', '}', ']':
		return -1
	}
	start := i
	for i < len(b) && !isDelimiter(b[i]) {
		i++
	}
	if i == start {
		return -1
	}
	return i
}

func skipContainer(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		switch b[i] {
		case '"':
			if i = skipString(b, i); i < 0 {
				return -1
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
		i++
	}
	return -1
}

func isDelimiter(c byte) bool {
	switch c {
	case ',', '}', ']', ':', ' ', '\t', '\n', '\r', '"', '{', '[':
		return true
	}
	return false
}
