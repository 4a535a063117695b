"""A varied ~5-minute recording for the jobs benchmarks: a meeting read by two offline voices.

The LibriVox clips are the only real English speech on the machine with a text (26 s), so the
long jobs recording repeats them 23 times: fine for ASR speed, but a degenerate input for a
summary (the same paragraph over and over). This meeting is the other input: varied content
with names, numbers, decisions and action items (what ``meeting_notes_v1`` is for), read in
turns by Piper joe (male) and Festival us-slt (female) with pauses between turns. The text was
written for voxgate's benchmarks and is dedicated to the public domain (CC0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# one turn per paragraph: "A:" Piper joe, "B:" Festival us-slt
SCRIPT = """\
A: Good morning everyone. This is the planning meeting for the Riverside library project, and it
   is the fourteenth of March. Maria, Daniel and Priya are here, and Tom sends his apologies
   because he is at the supplier in Leeds today.

B: Thanks, Daniel. I will start with the budget. We have forty two thousand pounds for the whole
   renovation. The roof repair took eleven thousand, so thirty one thousand is left for the
   reading room, the lighting and the new shelves.

A: That is less than I hoped. The quote for the shelves alone was fourteen thousand. Did the
   second supplier ever send their offer?

B: They did, on Monday. Their price is nine thousand five hundred, but delivery takes six weeks
   instead of three. I think the saving is worth the wait, because the reading room cannot open
   before the lighting is finished anyway.

A: I agree. So we go with the second supplier for the shelves. Priya, where are we with the
   lighting?

B: The electricians finished the wiring last Friday. The lamps themselves are still in the
   warehouse. I asked for delivery on the twenty first, and the installation should take two
   days. The only open question is the emergency lights near the stairs. The fire inspector
   wants four of them, and we planned for two.

A: Then we add two more. Safety is not where we save money. Can you get a price for the extra
   lights before Thursday?

B: Yes, I will call the electricians this afternoon and send everyone the price by Wednesday
   evening.

A: Good. Next point is the opening day. The council would like us to open on the second of May,
   which is a Saturday. Maria, is that realistic?

B: It is tight but possible. If the shelves arrive six weeks from now, that is the last week of
   April. We would have four or five days to put the books back. I suggest we ask the volunteers
   from the reading club to help. Last year twelve of them helped with the move, and they were
   very quick.

A: Good idea. Let us decide that the opening stays on the second of May, and we review the date
   again on the fifteenth of April if the shelves are late. Maria, could you write to the
   reading club?

B: Of course. I will send the email tomorrow and ask for at least ten people for the last week
   of April.

A: The last point is the children's corner. Tom proposed a small stage for story time, about
   three metres wide. The carpenter can build it for two thousand two hundred pounds.

B: I like the stage, but I am worried about the space. With the new shelves the corner is only
   five metres deep. A stage of three metres leaves room for about fifteen children. That might
   be enough for story time, but not for school visits.

A: That is a fair point. I do not want to decide without Tom. Let us put the stage on the agenda
   for the next meeting, and Tom can bring a drawing with the measurements.

B: Agreed. Should I ask the carpenter to hold the price until then?

A: Yes, please ask him to hold it for two weeks.

B: Before we finish, there are two smaller things. The first is the internet. The old router in
   the office covers only half of the building, and people in the reading room will expect it to
   work. A company in town offers three access points with installation for eight hundred and
   fifty pounds.

A: That sounds reasonable, and it fits in what is left of the budget. Does anyone object? No?
   Then we accept that offer. Priya, since you are talking to the electricians anyway, can they
   make sure there is power where the access points go?

B: I will ask them. The second thing is the cafe corner. Several visitors asked for coffee. We
   could rent a machine for forty five pounds a month, and the friends of the library would run
   it on Saturdays. Any money it makes would go to the children's books.

A: I like it, but I am not sure about the rules for selling food in a council building. Maria,
   do you know who decides that?

B: I think it is the facilities office at the council. I can ask Helen Carter there. She helped
   us with the permit for the book sale last autumn, so she will know.

A: Please do. We will not decide on the cafe today. If Helen says yes, we try it for three
   months from June and look at the numbers in September. And one more thing for the opening day
   itself. The mayor has agreed to cut the ribbon at eleven o'clock, and the primary school
   choir will sing two songs. We need someone to welcome the guests at the door and someone to
   take photographs for the newsletter.

B: I can take the photographs. My son has a good camera, and he offered to help. For the door,
   maybe one of the volunteers from the reading club would like to do it.

A: Good, Priya takes the photographs, and Maria asks the reading club about the door when she
   writes to them tomorrow. The newsletter goes out on the twenty fifth of April, so we can
   announce the opening there as well. I will write that text myself.

A: So, to sum up: we order the shelves from the second supplier, we add two emergency lights, we
   accept the offer for the access points, and the opening stays on the second of May. Priya
   sends the price for the lights by Wednesday, Maria writes to the reading club tomorrow and
   asks Helen Carter about the cafe, and Tom brings the drawing of the stage. The next meeting
   is on the twenty eighth of March at ten o'clock. Thank you all.
"""

MEETING: list[tuple[str, str]] = [
    (turn[0], " ".join(turn[2:].split())) for turn in SCRIPT.strip().split("\n\n")]


def meeting_text() -> str:
    """The whole meeting as one text (the reference a transcript is compared with)."""
    return " ".join(text for _, text in MEETING)


def meeting_audio(manager: Any, gap_s: float = 0.6) -> np.ndarray:
    """The meeting as 16 kHz mono float32: speaker A Piper joe, speaker B Festival us-slt."""
    from voxgate.audio import resample

    voices = {"A": (manager.get("tts", "en_US-joe-medium"), None),
              "B": (manager.get("tts", "festival"), "festival:cmu_us_slt_arctic_hts")}
    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    parts: list[np.ndarray] = []
    for speaker, text in MEETING:
        engine, voice = voices[speaker]
        for chunk in engine.synthesize(text, voice=voice):
            parts.append(resample(np.asarray(chunk.audio, dtype=np.float32), chunk.sample_rate))
        parts.append(gap)
    return np.concatenate(parts)
