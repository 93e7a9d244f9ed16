package loadgen

import "time"

// parseRFC3339 parses the times that Go's encoding/json writes, such as
// 2026-01-02T03:04:05.123456789Z or 2026-01-02T03:04:05.5+01:00, without
// allocating. time.Parse takes a string, and converting the chunk's bytes
// to one costs an allocation per chunk. It returns false for any other
// form, which time.Parse may still accept.
func parseRFC3339(b []byte) (time.Time, bool) {
	if len(b) < len("2006-01-02T15:04:05Z") ||
		b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	year, ok1 := digits(b[0:4])
	month, ok2 := digits(b[5:7])
	day, ok3 := digits(b[8:10])
	hour, ok4 := digits(b[11:13])
	minute, ok5 := digits(b[14:16])
	second, ok6 := digits(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) ||
		month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59 {
		return time.Time{}, false
	}
	nanos, rest, ok := fraction(b[19:])
	if !ok {
		return time.Time{}, false
	}
	offset, ok := zoneOffset(rest)
	if !ok || day > daysIn(month, year) {
		return time.Time{}, false
	}
	seconds := daysSinceEpoch(year, month, day)*86400 +
		int64(hour*3600+minute*60+second) - int64(offset/time.Second)
	return time.Unix(seconds, int64(nanos)), true
}

// daysIn returns the number of days in month (1 to 12) of year.
func daysIn(month, year int) int {
	switch {
	case month == 2 && year%4 == 0 && (year%100 != 0 || year%400 == 0):
		return 29
	case month == 2:
		return 28
	case month == 4 || month == 6 || month == 9 || month == 11:
		return 30
	}
	return 31
}

// daysSinceEpoch returns the days from 1970-01-01 to the date in the
// proleptic Gregorian calendar, for years 0 to 9999. It counts years from
// March, so that the leap day ends a year.
func daysSinceEpoch(year, month, day int) int64 {
	if month <= 2 {
		year--
	}
	// year is at least -1 here, so this is floor(year / 400).
	era := (year+400)/400 - 1
	yearOfEra := year - era*400
	dayOfYear := (153*((month+9)%12)+2)/5 + day - 1
	dayOfEra := yearOfEra*365 + yearOfEra/4 - yearOfEra/100 + dayOfYear
	return int64(era)*146097 + int64(dayOfEra) - 719468
}

// fraction parses an optional fraction of a second of 1 to 9 digits and
// returns it in nanoseconds, with the bytes after it.
func fraction(b []byte) (nanos int, rest []byte, ok bool) {
	if len(b) == 0 || b[0] != '.' {
		return 0, b, true
	}
	i := 1
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	n := i - 1
	if n == 0 || n > 9 {
		return 0, nil, false
	}
	nanos, _ = digits(b[1:i])
	for range 9 - n {
		nanos *= 10
	}
	return nanos, b[i:], true
}

// zoneOffset parses "Z" or "+hh:mm" or "-hh:mm", which must end b.
func zoneOffset(b []byte) (time.Duration, bool) {
	if len(b) == 1 && b[0] == 'Z' {
		return 0, true
	}
	if len(b) != len("+01:00") || (b[0] != '+' && b[0] != '-') || b[3] != ':' {
		return 0, false
	}
	hours, ok1 := digits(b[1:3])
	minutes, ok2 := digits(b[4:6])
	if !ok1 || !ok2 || hours > 23 || minutes > 59 {
		return 0, false
	}
	offset := time.Duration(hours)*time.Hour + time.Duration(minutes)*time.Minute
	if b[0] == '-' {
		offset = -offset
	}
	return offset, true
}

// digits parses b, which must hold only decimal digits.
func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
