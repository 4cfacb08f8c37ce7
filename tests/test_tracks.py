"""geoloc.trips.tracks: GPS tracks read from GPX, KML, KMZ and Google Takeout, as the tools write them."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from geoloc.errors import GeolocError
from geoloc.trips import _common, _jsonstream
from geoloc.trips.tracks import EMPTY, Track, TrackError, merge, read_track, read_tracks


def utc(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def about(self, word: str) -> list[str]:
        return [w for w in self if word in w]


@pytest.fixture
def warns() -> Warnings:
    return Warnings()


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- GPX ---------------------------------------------------------------------------------------

GARMIN_GPX = """<?xml version="1.0" encoding="UTF-8"?>
<gpx creator="Garmin Connect" version="1.1"
  xsi:schemaLocation="http://www.topografix.com/GPX/1/1 http://www.topografix.com/GPX/11.xsd"
  xmlns:ns3="http://www.garmin.com/xmlschemas/TrackPointExtension/v1"
  xmlns="http://www.topografix.com/GPX/1/1"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:ns2="http://www.garmin.com/xmlschemas/GpxExtensions/v3">
  <metadata>
    <link href="connect.garmin.com">
      <text>Garmin Connect</text>
    </link>
    <time>2024-05-01T05:59:00.000Z</time>
  </metadata>
  <trk>
    <name>Munich Walking</name>
    <type>walking</type>
    <trkseg>
      <trkpt lat="48.13743" lon="11.57549">
        <ele>520.4</ele>
        <time>2024-05-01T06:00:00.000Z</time>
        <extensions>
          <ns3:TrackPointExtension>
            <ns3:hr>92</ns3:hr>
            <ns3:cad>54</ns3:cad>
          </ns3:TrackPointExtension>
        </extensions>
      </trkpt>
      <trkpt lat="48.13760" lon="11.57600">
        <ele>520.8</ele>
        <time>2024-05-01T06:00:10.000Z</time>
        <extensions>
          <ns3:TrackPointExtension>
            <ns3:hr>95</ns3:hr>
          </ns3:TrackPointExtension>
        </extensions>
      </trkpt>
    </trkseg>
    <trkseg>
      <trkpt lat="48.14000" lon="11.58000">
        <ele>521.0</ele>
        <time>2024-05-01T06:30:00.000Z</time>
      </trkpt>
      <trkpt lat="48.14100" lon="11.58100">
        <ele>521.2</ele>
        <time>2024-05-01T06:30:05.000Z</time>
      </trkpt>
    </trkseg>
  </trk>
</gpx>
"""

# GPSLogger for Android: GPX 1.0, on one line, a <time> under <gpx>, DOPs on every point.
GPSLOGGER_GPX = (
    '<?xml version="1.0" encoding="UTF-8" ?><gpx version="1.0" creator="GPSLogger 131 - '
    'http://gpslogger.mendhak.com/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns="http://www.topografix.com/GPX/1/0" xsi:schemaLocation="http://www.topografix.com/GPX/1/0 '
    'http://www.topografix.com/GPX/1/0/gpx.xsd"><time>2024-05-01T06:00:00.000Z</time><trk><trkseg>'
    '<trkpt lat="-33.856784" lon="151.215297"><ele>20.0</ele><time>2024-05-01T06:00:00.000Z</time>'
    '<course>0.0</course><speed>0.0</speed><geoidheight>22.0</geoidheight><src>gps</src><sat>9</sat>'
    '<hdop>0.9</hdop><vdop>1.2</vdop><pdop>1.5</pdop></trkpt>'
    '<trkpt lat="-33.857000" lon="151.215500"><ele>21.0</ele><time>2024-05-01T06:00:05.000Z</time>'
    '<src>network</src><pdop>3.0</pdop></trkpt>'
    '<trkpt lat="-33.857200" lon="151.215700"><time>2024-05-01T06:00:10.000Z</time></trkpt>'
    "</trkseg></trk></gpx>"
)

# OsmAnd: GPX 1.1 with its own extensions, waypoints with times, a planned route without.
OSMAND_GPX = """<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>
<gpx version="1.1" creator="OsmAnd~ 4.7.10" xmlns="http://www.topografix.com/GPX/1/1" xmlns:osmand="https://osmand.net" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.topografix.com/GPX/1/1 http://www.topografix.com/GPX/1/1/gpx.xsd">
  <metadata>
    <name>2024-05-01_08-00_Wed</name>
  </metadata>
  <wpt lat="48.1500000" lon="11.5800000">
    <time>2024-05-01T07:00:00Z</time>
    <name>Biergarten</name>
    <extensions>
      <osmand:icon>special_star</osmand:icon>
    </extensions>
  </wpt>
  <wpt lat="48.1600000" lon="11.5900000">
    <name>No time, not a fix</name>
  </wpt>
  <rte>
    <name>Planned</name>
    <rtept lat="48.2" lon="11.6"/>
    <rtept lat="48.3" lon="11.7"/>
  </rte>
  <trk>
    <trkseg>
      <trkpt lat="48.1400000" lon="11.5700000">
        <ele>520</ele>
        <time>2024-05-01T06:00:00Z</time>
        <hdop>2.0</hdop>
        <extensions>
          <osmand:speed>1.2</osmand:speed>
        </extensions>
      </trkpt>
      <trkpt lat="48.1410000" lon="11.5710000">
        <time>2024-05-01T06:00:30Z</time>
      </trkpt>
    </trkseg>
  </trk>
</gpx>
"""


def test_garmin_gpx_segments_and_times(tmp_path, warns):
    track = read_track(write(tmp_path, "activity_1234.gpx", GARMIN_GPX), warn=warns)
    assert len(track) == 4 and warns == []
    assert track.t[0] == utc("2024-05-01T06:00:00Z")  # not the metadata's time
    np.testing.assert_allclose(track.lat, [48.13743, 48.13760, 48.14, 48.141])
    assert track.segment.tolist()[0] == track.segment.tolist()[1] != track.segment.tolist()[2]
    assert track.t.dtype == np.float64 and track.segment.dtype == np.int32
    assert track.accuracy_m.dtype == np.float32 and np.isnan(track.accuracy_m).all()
    assert track.sources == (tmp_path / "activity_1234.gpx",)


def test_gpx_1_0_phone_logger_dop_accuracy_and_other_continent(tmp_path, warns):
    track = read_track(write(tmp_path, "20240501.gpx", GPSLOGGER_GPX), warn=warns)
    assert len(track) == 3 and warns == []  # Sydney: not an error, just read
    assert track.t[0] == utc("2024-05-01T06:00:00Z")  # not the <time> under <gpx>
    np.testing.assert_allclose(track.accuracy_m[:2], [4.5, 15.0])  # 5 m × hdop, else 5 m × pdop
    assert np.isnan(track.accuracy_m[2])
    assert track.lat[0] == -33.856784 and track.lon[0] == 151.215297


def test_osmand_gpx_waypoints_with_times_are_fixes_routes_without_are_not(tmp_path, warns):
    track = read_track(write(tmp_path, "osmand.gpx", OSMAND_GPX), warn=warns)
    assert len(track) == 3
    assert track.t.tolist() == [utc("2024-05-01T06:00:00Z"), utc("2024-05-01T06:00:30Z"), utc("2024-05-01T07:00:00Z")]
    assert track.segment[0] == track.segment[1] != track.segment[2]  # the waypoint stands alone
    assert track.accuracy_m[0] == 10.0
    assert warns.about("3 fixes without a time stamp dropped")  # a waypoint and two route points


def test_plain_gpx_without_namespace_and_a_route_with_times(tmp_path, warns):
    text = """<gpx version="1.1" creator="hand">
      <rte><rtept lat="10" lon="20"><time>2024-05-01T06:00:00+02:00</time></rtept>
           <rtept lat="10.1" lon="20.1"><time>2024-05-01T06:10:00+02:00</time></rtept></rte>
      <trk><trkseg><trkpt lat="1" lon="2"><time>2024-05-01T06:00:00</time></trkpt></trkseg></trk>
    </gpx>"""
    track = read_track(write(tmp_path, "plain.gpx", text), warn=warns)
    assert track.t.tolist() == [utc("2024-05-01T04:00:00Z"), utc("2024-05-01T04:10:00Z"), utc("2024-05-01T06:00:00Z")]
    assert track.segment[0] == track.segment[1] != track.segment[2]
    assert warns.about("1 times without a time zone read as UTC")


def test_a_time_inside_extensions_is_not_the_fix_time(tmp_path, warns):
    text = """<gpx xmlns="http://www.topografix.com/GPX/1/1" xmlns:x="urn:x"><trk><trkseg>
      <trkpt lat="1" lon="2"><extensions><x:time>2030-01-01T00:00:00Z</x:time><time>2031-01-01T00:00:00Z</time>
      </extensions><time>2024-05-01T06:00:00Z</time></trkpt></trkseg></trk></gpx>"""
    track = read_track(write(tmp_path, "ext.gpx", text), warn=warns)
    assert track.t.tolist() == [utc("2024-05-01T06:00:00Z")] and warns == []


# --- KML / KMZ ---------------------------------------------------------------------------------

def google_earth_track(whens: list[str], coords: list[str], multi: bool = False) -> str:
    def track(w, c):
        return ("<gx:Track>\n<altitudeMode>clampToGround</altitudeMode>\n"
                + "".join(f"<when>{x}</when>\n" for x in w) + "".join(f"<gx:coord>{x}</gx:coord>\n" for x in c)
                + '<ExtendedData><SchemaData schemaUrl="#schema"><gx:SimpleArrayData name="heartrate">'
                + "".join("<gx:value>90</gx:value>" for _ in w) + "</gx:SimpleArrayData></SchemaData></ExtendedData>\n"
                "</gx:Track>\n")

    body = track(whens, coords)
    if multi:
        body = "<gx:MultiTrack>\n<gx:interpolate>0</gx:interpolate>\n" + body + track(
            ["2024-05-01T09:00:00Z", "2024-05-01T09:00:10Z"], ["11.60 48.20 530", "11.61 48.21 531"]) + "</gx:MultiTrack>\n"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<kml xmlns="http://www.opengis.net/kml/2.2" xmlns:gx="http://www.google.com/kml/ext/2.2" xmlns:kml="http://www.opengis.net/kml/2.2" xmlns:atom="http://www.w3.org/2005/Atom">
<Document>
\t<name>Walk.kml</name>
\t<LookAt><gx:TimeStamp><when>2030-01-01T00:00:00Z</when></gx:TimeStamp><longitude>11.5</longitude><latitude>48.1</latitude></LookAt>
\t<Schema id="schema"><gx:SimpleArrayField name="heartrate" type="int"><displayName>Heart Rate</displayName></gx:SimpleArrayField></Schema>
\t<Style id="track"><LineStyle><color>ff0000ff</color><width>4</width></LineStyle></Style>
\t<Placemark>
\t\t<name>Walk</name>
\t\t<styleUrl>#track</styleUrl>
{body}\t</Placemark>
</Document>
</kml>
"""


EARTH_WHENS = ["2024-05-01T06:00:00Z", "2024-05-01T06:00:05Z", "2024-05-01T08:00:10.5+02:00"]
EARTH_COORDS = ["11.57549 48.13743 520", "11.57600 48.13760 520.5", "11.57700 48.13800"]


def test_google_earth_gx_track(tmp_path, warns):
    track = read_track(write(tmp_path, "walk.kml", google_earth_track(EARTH_WHENS, EARTH_COORDS)), warn=warns)
    assert warns == [] and len(track) == 3
    assert track.t.tolist() == [utc("2024-05-01T06:00:00Z"), utc("2024-05-01T06:00:05Z"), utc("2024-05-01T06:00:10.5Z")]
    np.testing.assert_allclose(track.lon, [11.57549, 11.576, 11.577])
    assert len(set(track.segment.tolist())) == 1


def test_gx_multitrack_each_track_a_segment(tmp_path, warns):
    track = read_track(write(tmp_path, "multi.kml", google_earth_track(EARTH_WHENS, EARTH_COORDS, multi=True)), warn=warns)
    assert len(track) == 5 and len(set(track.segment[:3].tolist())) == 1 and track.segment[3] != track.segment[2]


def test_gx_track_with_unpaired_whens_warns(tmp_path, warns):
    track = read_track(write(tmp_path, "odd.kml", google_earth_track(EARTH_WHENS, EARTH_COORDS[:2])), warn=warns)
    assert len(track) == 2 and warns.about("3 <when> but 2 <gx:coord>")


LOCATION_HISTORY_KML = """<?xml version='1.0' encoding='UTF-8'?>
<kml xmlns='http://www.opengis.net/kml/2.2' xmlns:gx='http://www.google.com/kml/ext/2.2'>
  <Document>
    <name>Location history from 2024-05-01 to 2024-05-01 </name>
    <open>1</open>
    <description/>
    <Style id="line-000000-1"><LineStyle><color>ff000000</color><width>1</width></LineStyle></Style>
    <Placemark>
      <name>Home</name>
      <address>Marienplatz 1, München</address>
      <Point><coordinates>11.5,48.1,0</coordinates></Point>
      <TimeSpan><begin>2024-05-01T05:00:00.000Z</begin><end>2024-05-01T06:00:00.000Z</end></TimeSpan>
    </Placemark>
    <Placemark>
      <name>Walking</name>
      <description>Walking from 2024-05-01T06:00:00.000Z to 2024-05-01T07:00:00.000Z. Distance 22000m </description>
      <LineString>
        <altitudeMode>clampToGround</altitudeMode>
        <extrude>1</extrude>
        <tesselate>1</tesselate>
        <coordinates>11.5,48.1,0 11.6,48.1,0 11.8,48.1,0</coordinates>
      </LineString>
      <TimeSpan><begin>2024-05-01T06:00:00.000Z</begin><end>2024-05-01T07:00:00.000Z</end></TimeSpan>
    </Placemark>
    <Placemark>
      <name>Photo spot</name>
      <TimeStamp><when>2024-05-01T07:30:00Z</when></TimeStamp>
      <Point><coordinates>11.9, 48.2</coordinates></Point>
    </Placemark>
    <Placemark>
      <name>A line with one instant</name>
      <TimeStamp><when>2024-05-01T08:00:00Z</when></TimeStamp>
      <LineString><coordinates>1,1 2,2</coordinates></LineString>
    </Placemark>
  </Document>
</kml>
"""


def test_linestring_with_timespan_spread_by_distance_and_point_placemarks(tmp_path, warns):
    track = read_track(write(tmp_path, "history-2024-05-01.kml", LOCATION_HISTORY_KML), warn=warns)
    hour = utc("2024-05-01T06:00:00Z")
    # the stay at Home (05:00 and 06:00, the second the same as the walk's start), the walk, the photo spot
    assert track.t.tolist() == pytest.approx([hour - 3600, hour, hour + 1200, hour + 3600, hour + 5400])
    np.testing.assert_allclose(track.lon, [11.5, 11.5, 11.6, 11.8, 11.9])
    assert track.segment[0] != track.segment[2] and track.segment[2] == track.segment[3] != track.segment[4]
    assert warns.about("a LineString with a single TimeStamp has no time for each of its 2 points")


def test_kmz_with_doc_kml_and_images(tmp_path, warns):
    path = tmp_path / "walk.kmz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as kmz:
        kmz.writestr("doc.kml", google_earth_track(EARTH_WHENS, EARTH_COORDS))
        kmz.writestr("files/photo.jpg", b"\xff\xd8\xff\xe0 not really")
    track = read_track(path, warn=warns)
    assert len(track) == 3 and warns == []


def test_kmz_with_any_kml_inside(tmp_path):
    path = tmp_path / "export.kmz"
    with zipfile.ZipFile(path, "w") as kmz:
        kmz.writestr("tracks/2024-05-01.kml", LOCATION_HISTORY_KML)
    assert len(read_track(path, warn=lambda m: None)) == 5


def test_kmz_without_kml_inside(tmp_path):
    path = tmp_path / "nothing.kmz"
    with zipfile.ZipFile(path, "w") as kmz:
        kmz.writestr("files/icon.png", b"\x89PNG")
    with pytest.raises(TrackError, match=r"nothing\.kmz: is a zip archive without a \.kml inside.*files/icon\.png"):
        read_track(path)


# --- Google Takeout ----------------------------------------------------------------------------

RECORDS_JSON = """{
  "locations": [{
    "latitudeE7": 481374300,
    "longitudeE7": 115754900,
    "accuracy": 20,
    "source": "WIFI",
    "deviceTag": 1978796627,
    "platformType": "ANDROID",
    "timestamp": "2024-05-01T06:00:00.000Z"
  }, {
    "latitudeE7": 481375300,
    "longitudeE7": 115755900,
    "accuracy": 13,
    "activity": [{
      "activity": [{
        "type": "STILL",
        "confidence": 100
      }],
      "timestamp": "2024-05-01T06:01:05.500Z"
    }],
    "source": "GPS",
    "deviceTag": 1978796627,
    "timestamp": "2024-05-01T08:01:00.5+02:00"
  }, {
    "latitudeE7": 481376300,
    "longitudeE7": 115756900,
    "accuracy": 1800,
    "timestampMs": "1714543320000"
  }, {
    "latitudeE7": 0,
    "longitudeE7": 0,
    "accuracy": 3000,
    "timestamp": "2024-05-01T06:03:00Z"
  }, {
    "latitudeE7": 4294967296,
    "longitudeE7": 115756900,
    "timestamp": "2024-05-01T06:04:00Z"
  }]
}
"""


def test_records_json_both_timestamp_forms(tmp_path, warns):
    track = read_track(write(tmp_path, "Records.json", RECORDS_JSON), warn=warns)
    assert track.t.tolist() == [utc("2024-05-01T06:00:00Z"), utc("2024-05-01T06:01:00.5Z"), 1714543320.0,
                                utc("2024-05-01T06:04:00Z")]
    np.testing.assert_allclose(track.lat[:3], [48.13743, 48.13753, 48.13763])
    assert track.lat[3] == pytest.approx(0.0)  # 2^32 E7 too much: wrapped back, as old exports need
    assert track.accuracy_m.tolist() == [20.0, 13.0, 1800.0, pytest.approx(np.nan, nan_ok=True)]
    assert warns.about("1 fixes with an invalid position dropped")  # the 0, 0


TIMELINE_JSON = """{
  "semanticSegments": [
    {
      "startTime": "2024-05-01T08:00:00.000+02:00",
      "endTime": "2024-05-01T09:00:00.000+02:00",
      "startTimeTimezoneUtcOffsetMinutes": 120,
      "endTimeTimezoneUtcOffsetMinutes": 120,
      "visit": {
        "hierarchyLevel": 0,
        "probability": 0.9,
        "topCandidate": {
          "placeId": "ChIJ2V-Mo_l1nkcRfZixfUq4DAE",
          "semanticType": "HOME",
          "probability": 0.8,
          "placeLocation": {"latLng": "48.1374300°, 11.5754900°"}
        }
      }
    },
    {
      "startTime": "2024-05-01T09:00:00.000+02:00",
      "endTime": "2024-05-01T09:30:00.000+02:00",
      "activity": {
        "start": {"latLng": "48.1374300°, 11.5754900°"},
        "end": {"latLng": "48.1500000°, 11.6000000°"},
        "distanceMeters": 2400.5,
        "topCandidate": {"type": "WALKING", "probability": 0.9}
      }
    },
    {
      "startTime": "2024-05-01T09:00:00.000+02:00",
      "endTime": "2024-05-01T11:00:00.000+02:00",
      "timelinePath": [
        {"point": "48.1380000°, 11.5760000°", "time": "2024-05-01T09:05:00.000+02:00"},
        {"point": "48.1390000°, 11.5770000°", "time": "2024-05-01T09:07:00.000+02:00"}
      ]
    }
  ],
  "rawSignals": [
    {"position": {"LatLng": "48.1395000°, 11.5775000°", "accuracyMeters": 13, "altitudeMeters": 530.1,
                  "source": "WIFI", "timestamp": "2024-05-01T09:08:00.000+02:00", "speedMetersPerSecond": 1.2}},
    {"wifiScan": {"deliveryTime": "2024-05-01T09:08:00.000+02:00", "devicesRecords": [{"mac": 1234, "rawRssi": -70}]}},
    {"activityRecord": {"probableActivities": [{"type": "STILL", "confidence": 0.9}], "timestamp": "2024-05-01T09:08:00.000+02:00"}}
  ],
  "userLocationProfile": {"frequentPlaces": [{"placeId": "ChIJ", "placeLocation": "48.1374300°, 11.5754900°", "label": "HOME"}]}
}
"""


def test_timeline_export_visits_activities_paths_and_raw_signals(tmp_path, warns):
    track = read_track(write(tmp_path, "Timeline.json", TIMELINE_JSON), warn=warns)
    assert warns == []  # the visit's end is the activity's start: the same fix, kept once
    assert track.t.tolist() == [utc(f"2024-05-01T0{h}Z") for h in ("6:00:00", "7:00:00", "7:05:00", "7:07:00", "7:08:00", "7:30:00")]
    np.testing.assert_allclose(track.lat, [48.13743, 48.13743, 48.138, 48.139, 48.1395, 48.15])
    visit, activity, path, raw = track.segment[0], track.segment[5], track.segment[2], track.segment[4]
    assert track.segment[1] == visit and len({visit, activity, path, raw}) == 4
    assert track.accuracy_m[4] == 13.0


ON_DEVICE_JSON = """[
  {
    "endTime" : "2024-05-01T09:00:00.000+02:00",
    "startTime" : "2024-05-01T08:00:00.000+02:00",
    "visit" : {
      "hierarchyLevel" : "0",
      "topCandidate" : {
        "probability" : "0.850000",
        "semanticType" : "Home",
        "placeID" : "ChIJ2V-Mo_l1nkcRfZixfUq4DAE",
        "placeLocation" : "geo:48.137430,11.575490"
      },
      "probability" : "0.900000"
    }
  },
  {
    "endTime" : "2024-05-01T09:30:00.000+02:00",
    "startTime" : "2024-05-01T09:00:00.000+02:00",
    "activity" : {
      "probability" : "0.900000",
      "end" : "geo:48.150000,11.600000",
      "topCandidate" : {"type" : "walking", "probability" : "0.800000"},
      "distanceMeters" : "2400.500000",
      "start" : "geo:48.137430,11.575490"
    }
  },
  {
    "endTime" : "2024-05-01T11:00:00.000+02:00",
    "startTime" : "2024-05-01T09:00:00.000+02:00",
    "timelinePath" : [
      {"point" : "geo:48.138000,11.576000", "durationMinutesOffsetFromStartTime" : "5"},
      {"point" : "geo:48.139000,11.577000", "durationMinutesOffsetFromStartTime" : "7"}
    ]
  },
  {
    "endTime" : "2024-05-02T00:00:00.000+02:00",
    "startTime" : "2024-05-01T00:00:00.000+02:00",
    "timelineMemory" : {"destinations" : [{"identifier" : "ChIJ"}], "distanceFromOriginKms" : "0"}
  }
]
"""


def test_on_device_timeline_list(tmp_path, warns):
    track = read_track(write(tmp_path, "location-history.json", ON_DEVICE_JSON), warn=warns)
    assert warns == []
    assert track.t.tolist() == [utc(f"2024-05-01T0{h}Z") for h in ("6:00:00", "7:00:00", "7:05:00", "7:07:00", "7:30:00")]
    np.testing.assert_allclose(track.lon, [11.57549, 11.57549, 11.576, 11.577, 11.6])


def test_semantic_location_history_month(tmp_path, warns):
    doc = {"timelineObjects": [
        {"placeVisit": {"location": {"latitudeE7": 481374300, "longitudeE7": 115754900, "name": "Home"},
                        "duration": {"startTimestamp": "2019-01-01T08:00:00Z", "endTimestamp": "2019-01-01T09:00:00Z"}}},
        {"activitySegment": {"startLocation": {"latitudeE7": 481374300, "longitudeE7": 115754900},
                             "endLocation": {"latitudeE7": 481500000, "longitudeE7": 116000000},
                             "duration": {"startTimestampMs": "1546333200000", "endTimestampMs": "1546335000000"},
                             "simplifiedRawPath": {"points": [{"latE7": 481400000, "lngE7": 115800000,
                                                               "timestampMs": "1546334000000", "accuracyMeters": 10}]}}}]}
    track = read_track(write(tmp_path, "2019_JANUARY.json", json.dumps(doc, indent=2)), warn=warns)
    assert warns == [] and len(track) == 4
    assert track.t.tolist() == [utc("2019-01-01T08:00:00Z"), utc("2019-01-01T09:00:00Z"), 1546334000.0, 1546335000.0]


def test_json_window_boundaries_anywhere(tmp_path, monkeypatch):
    """The streaming reader gives the same fixes whatever size its window: every element, key and
    number cut by a window's end at some point."""
    path = write(tmp_path, "Timeline.json", TIMELINE_JSON)
    expected = read_track(path, warn=lambda m: None)
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(_jsonstream, "CHUNK", chunk)
        got = read_track(path, warn=lambda m: None)
        assert got.t.tolist() == expected.t.tolist() and got.lat.tolist() == expected.lat.tolist()
    monkeypatch.setattr(_jsonstream, "CHUNK", 5)
    assert len(read_track(write(tmp_path, "Records.json", RECORDS_JSON), warn=lambda m: None)) == 4


def test_xml_chunk_boundaries_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "CHUNK", 3)
    assert len(read_track(write(tmp_path, "a.gpx", GARMIN_GPX), warn=lambda m: None)) == 4


# --- merging -----------------------------------------------------------------------------------

def test_read_tracks_merges_sorted_with_segments_apart(tmp_path, warns):
    gpx = write(tmp_path, "a.gpx", GARMIN_GPX)
    records = write(tmp_path, "Records.json", RECORDS_JSON)
    track = read_tracks([gpx, records], warn=warns)
    # both start at 06:00:00, a few metres apart: the GPX, given first, keeps that second
    assert len(track) == 7 and np.all(np.diff(track.t) > 0) and track.lat[0] == 48.13743
    assert track.sources == (gpx, records)
    gpx_segments = set(track.segment[np.isin(track.t, read_track(gpx).t)].tolist())
    assert len(gpx_segments) == 2 and not gpx_segments & set(track.segment[track.accuracy_m > 0].tolist())
    assert warns[0].startswith(f"{records}: 1 fixes with an invalid position")  # each file's warnings name it
    assert warns[1] == "1 fixes of different files at the same time but elsewhere: kept the file given first"


def test_merge_same_time_elsewhere_keeps_the_first_given(tmp_path, warns):
    a = Track((Path("a"),), [1.0, 2.0], [1.0, 1.0], [1.0, 1.0], [0, 0], [np.nan, np.nan])
    b = Track((Path("b"),), [2.0, 3.0], [5.0, 5.0], [5.0, 5.0], [0, 0], [np.nan, np.nan])
    merged = merge([a, b], warn=warns)
    assert merged.t.tolist() == [1.0, 2.0, 3.0] and merged.lat.tolist() == [1.0, 1.0, 5.0]
    assert merged.segment.tolist() == [0, 0, 1] and warns.about("1 fixes of different files")
    assert merge([]) is EMPTY and len(EMPTY) == 0 and merge([EMPTY, a]).t.tolist() == [1.0, 2.0]
    assert read_tracks([]) is EMPTY


def test_track_is_immutable_and_checked():
    track = Track((), [1.0], [2.0], [3.0], [0], [np.nan])
    with pytest.raises(ValueError):
        track.t[0] = 5.0
    with pytest.raises(ValueError, match="lat has shape"):
        Track((), [1.0], [2.0, 3.0], [3.0], [0], [np.nan])
    assert "1 fixes in 1 segments" in repr(track)


# --- bad input ---------------------------------------------------------------------------------

def gpx_points(*points: tuple[float, float, str | None]) -> str:
    pts = "".join(f'<trkpt lat="{lat}" lon="{lon}">' + (f"<time>{t}</time>" if t else "") + "</trkpt>"
                  for lat, lon, t in points)
    return f'<gpx xmlns="http://www.topografix.com/GPX/1/1" version="1.1"><trk><trkseg>{pts}</trkseg></trk></gpx>'


def test_no_time_stamps_at_all(tmp_path):
    path = write(tmp_path, "planned.gpx", gpx_points((1, 2, None), (1.1, 2.1, None)))
    with pytest.raises(TrackError, match=r"planned\.gpx: has no time stamps: a track without times cannot place "
                                         "photos by time"):
        read_track(path)


def test_out_of_order_sorted_and_warned_once(tmp_path, warns):
    path = write(tmp_path, "shuffled.gpx", gpx_points((1, 1, "2024-05-01T06:00:02Z"), (2, 2, "2024-05-01T06:00:00Z"),
                                                      (3, 3, "2024-05-01T06:00:01Z"), (4, 4, "2024-05-01T06:00:03Z")))
    track = read_track(path, warn=warns)
    assert track.lat.tolist() == [2, 3, 1, 4]
    assert warns == [f"{path}: 2 fixes out of time order: sorted"]


def test_duplicate_times_kept_once_and_conflicts_warned(tmp_path, warns):
    t = "2024-05-01T06:00:00Z"
    path = write(tmp_path, "dups.gpx", gpx_points((1, 1, t), (1, 1, t), (2, 2, t), (3, 3, "2024-05-01T06:00:01Z")))
    track = read_track(path, warn=warns)
    assert track.lat.tolist() == [1, 3]
    assert warns == [f"{path}: 1 fixes at the same time as an earlier one but elsewhere: kept the earlier one"]


def test_zero_length_and_single_point_segments_are_kept_as_fixes(tmp_path, warns):
    text = ('<gpx version="1.1"><trk><trkseg></trkseg><trkseg><trkpt lat="1" lon="1"><time>2024-05-01T06:00:00Z</time>'
            '</trkpt></trkseg><trkseg><trkpt lat="2" lon="2"><time>2024-05-01T07:00:00Z</time></trkpt>'
            '<trkpt lat="2" lon="2"><time>2024-05-01T07:05:00Z</time></trkpt></trkseg></trk></gpx>')
    track = read_track(write(tmp_path, "s.gpx", text), warn=warns)
    assert len(track) == 3 and warns == [] and track.segment[0] != track.segment[1] == track.segment[2]


def test_invalid_coordinates_dropped_with_count(tmp_path, warns):
    t = [f"2024-05-01T06:00:0{i}Z" for i in range(6)]
    path = write(tmp_path, "bad.gpx", gpx_points((91, 1, t[0]), (1, 181, t[1]), ("nan", 1, t[2]), ("x", 1, t[3]),
                                                 (0, 0, t[4]), (-89.9, -179.9, t[5])))
    track = read_track(path, warn=warns)
    assert track.lat.tolist() == [-89.9]
    assert warns.about("5 fixes with an invalid position dropped")


def test_future_times_dropped_with_count(tmp_path, warns):
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
    path = write(tmp_path, "clock.gpx", gpx_points((1, 1, "2024-05-01T06:00:00Z"), (2, 2, soon), (3, 3, later),
                                                   (4, 4, "2099-01-01T00:00:00Z")))
    track = read_track(path, warn=warns)
    assert track.lat.tolist() == [1, 2]
    assert warns == [f"{path}: 2 fixes dated in the future (after tomorrow) dropped: a clock set wrong"]


def test_unreadable_and_date_only_times(tmp_path, warns):
    path = write(tmp_path, "t.gpx", gpx_points((1, 1, "2024-05-01T06:00:00Z"), (2, 2, "yesterday"), (3, 3, "2024-05-01")))
    assert read_track(path, warn=warns).lat.tolist() == [1]
    assert warns.about("2 fixes with an unreadable time dropped (e.g. 'yesterday')")


def test_all_fixes_dropped_is_an_error(tmp_path):
    path = write(tmp_path, "null.gpx", gpx_points((0, 0, "2024-05-01T06:00:00Z")))
    with pytest.raises(TrackError, match=r"null\.gpx: has no usable fixes"):
        read_track(path, warn=lambda m: None)


def test_gpx_with_no_points(tmp_path):
    with pytest.raises(TrackError, match="holds no track points"):
        read_track(write(tmp_path, "e.gpx", '<gpx version="1.1"><metadata/></gpx>'))


@pytest.mark.parametrize("name, text, message", [
    ("broken.gpx", '<gpx version="1.1">\n<trk>\n<trkseg>\n<trkpt lat="1" lon="2">\n</trk>',
     r"broken\.gpx: is not well-formed XML \(mismatched tag: line 5"),
    ("cut.gpx", GARMIN_GPX[:700], r"cut\.gpx: is not well-formed XML \(.*line"),
    ("Records.json", RECORDS_JSON.replace('"accuracy": 13,', '"accuracy": 13,,'),
     r"Records\.json: is not valid JSON \(line 13: Expecting property name"),
    ("cut.json", RECORDS_JSON[:300], r"cut\.json: is not valid JSON \(line"),
    ("trail.json", '{"locations": []} {"x": 1}', r"more text after the end"),
    ("meta.json", '{"title": "IMG_0001.jpg", "geoData": {"latitude": 48.1}}', "is JSON but not a Google Takeout location history"),
    ("empty.gpx", "", r"empty\.gpx: is empty"),
    ("IMG_0001.gpx", b"\xff\xd8\xff\xe1\x00\x18Exif\x00\x00MM\x00*", r"IMG_0001\.gpx: is a JPEG image, not a track"),
    ("IMG_0002.kml", b"\x00\x00\x00\x18ftypheic\x00\x00", r"is a HEIC/MP4/MOV file, not a track"),
    ("notes.gpx", "just some text", r"notes\.gpx: is not a GPX, KML, KMZ or Google Takeout JSON file despite its \.gpx"),
    ("page.xml", "<html><body/></html>", r"is XML but neither GPX nor KML \(its root element is <html>\)"),
    ("fake.kmz", b"PK\x03\x04 broken zip", r"fake\.kmz: is a damaged zip archive"),
    ("latin.json", b'{"locations": [{"x": "\xe9"}]}', r"is not UTF-8 text"),
])
def test_bad_files_are_one_line_errors(tmp_path, name, text, message):
    with pytest.raises(TrackError, match=message) as info:
        read_track(write(tmp_path, name, text), warn=lambda m: None)
    assert isinstance(info.value, GeolocError) and "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(TrackError, match="no such file"):
        read_track(tmp_path / "gone.gpx")
    with pytest.raises(TrackError, match="is a folder"):
        read_track(tmp_path)
    with pytest.raises(TrackError, match=r"gone\.gpx"):
        read_tracks([write(tmp_path, "a.gpx", GARMIN_GPX), tmp_path / "gone.gpx"])


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "track.gpx"
    os.mkfifo(fifo)
    with pytest.raises(TrackError, match="is not a regular file"):
        read_track(fifo)


def test_format_by_content_not_suffix(tmp_path):
    assert len(read_track(write(tmp_path, "track.txt", GARMIN_GPX))) == 4
    assert len(read_track(write(tmp_path, "really_kml.gpx", google_earth_track(EARTH_WHENS, EARTH_COORDS)))) == 3
    assert len(read_track(write(tmp_path, "bom.gpx", b"\xef\xbb\xbf" + GARMIN_GPX.encode()))) == 4


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE {root} [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<{root}><trk><trkseg><trkpt lat="1" lon="2"><time>&lol9;</time></trkpt></trkseg></trk></{root}>
"""


@pytest.mark.parametrize("root, suffix", [("gpx", "gpx"), ("kml", "kml"), ("lolz", "gpx")])
def test_billion_laughs_refused_quickly(tmp_path, root, suffix):
    path = write(tmp_path, f"lol.{suffix}", BILLION_LAUGHS.format(root=root))
    start = time.perf_counter()
    with pytest.raises(TrackError, match=r"lol\.\w+: declares a DTD or entities.*refused"):
        read_track(path)
    assert time.perf_counter() - start < 1.0


def test_external_entity_refused(tmp_path):
    text = ('<?xml version="1.0"?><!DOCTYPE gpx [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            '<gpx><wpt lat="1" lon="2"><time>&xxe;</time></wpt></gpx>')
    with pytest.raises(TrackError, match="declares a DTD or entities"):
        read_track(write(tmp_path, "xxe.gpx", text))


def test_kmz_with_an_attack_inside_names_the_member(tmp_path):
    path = tmp_path / "lol.kmz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as kmz:
        kmz.writestr("doc.kml", BILLION_LAUGHS.format(root="kml"))
    with pytest.raises(TrackError, match=r"lol\.kmz: doc\.kml inside declares a DTD"):
        read_track(path)


# --- bounded memory ----------------------------------------------------------------------------

def write_records(path: Path, n: int) -> None:
    """A Records.json of ``n`` fixes, one a second, written in blocks (about 80 bytes a fix)."""
    t0 = 1_714_550_400_000
    with open(path, "w") as fh:
        fh.write('{\n  "locations": [')
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            fh.write(", ".join(f'{{"latitudeE7": {481374300 + i}, "longitudeE7": {115754900 + i}, '
                               f'"timestampMs": "{t0 + 1000 * i}"}}' for i in range(start, stop)))
            fh.write(", " if stop < n else "]\n}\n")


def peak_reading(path: Path) -> tuple[Track, int]:
    tracemalloc.start()
    try:
        track = read_track(path, warn=lambda m: None)
        return track, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_records_json_is_streamed(tmp_path):
    """1e5 fixes (8 MB of JSON; json.load takes about 70 MB): the peak is the fixes' arrays
    (32 bytes each, 3.2 MB) and the 1 MiB window with its decoding buffers (measured: 8.2 MB)."""
    path = tmp_path / "Records.json"
    write_records(path, 100_000)
    track, peak = peak_reading(path)
    assert len(track) == 100_000 and np.all(np.diff(track.t) == 1.0)
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB for {path.stat().st_size / 1e6:.0f} MB of JSON"


def test_a_huge_kml_coordinates_text_is_refused_not_buffered(tmp_path, monkeypatch):
    from geoloc.trips import kml

    monkeypatch.setattr(kml, "MAX_TEXT", 30)
    with pytest.raises(TrackError, match=r"h\.kml: has a <coordinates> longer than 30 characters"):
        read_track(write(tmp_path, "h.kml", LOCATION_HISTORY_KML))
