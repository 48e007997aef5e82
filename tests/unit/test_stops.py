from freehold_serving.engines.stops import StopMatcher


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


def test_no_stops_passes_text_through() -> None:
    assert feed_all([], ["a", "b"]) == ("ab", False)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    assert feed_all(["END"], ["hello E", "N", "D more"]) == ("hello ", True)


def test_partial_match_that_fails_is_released() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("X") == ("EX", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(["\n\n", "###"], ["a ### b\n\nc"]) == ("a ", True)


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(["END"], ["the E"]) == ("the E", False)
