"""Log-mel features of PEMT's audio segments."""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor

from .configuration_pemt import PemtConfig

__all__ = ["PemtFeatureExtractor", "htk_mel_filter_bank"]


def _hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def htk_mel_filter_bank(num_frequency_bins: int, num_mel_bins: int, sampling_rate: int) -> torch.Tensor:
    """Triangular filters equally spaced on the HTK mel scale from 0 Hz to Nyquist, without area normalisation
    (torchaudio's `MelSpectrogram` defaults). Returns `[num_frequency_bins, num_mel_bins]` (float64)."""
    fft_freqs = torch.linspace(0, sampling_rate / 2, num_frequency_bins, dtype=torch.float64)
    mel_edges = torch.linspace(0.0, float(_hz_to_mel(sampling_rate / 2)), num_mel_bins + 2, dtype=torch.float64)
    hz_edges = _mel_to_hz(mel_edges)
    widths = hz_edges[1:] - hz_edges[:-1]
    distance = hz_edges[None, :] - fft_freqs[:, None]  # [freqs, mel + 2]
    rising = -distance[:, :-2] / widths[:-1]
    falling = distance[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class PemtFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns mono audio segments into the log-mel spectrograms PEMT's audio CNN reads: a power spectrogram (periodic
    Hann window, `n_fft = win_length`, centred frames with reflect padding), an HTK mel filter bank without
    normalisation from 0 Hz to Nyquist, `log(mel + log_offset)`, padded or cropped to `audio_frames` frames. When
    training, one band of mel bins and one band of frames, each up to `spec_augment_ratio` of its axis, are masked
    (SpecAugment).

    Padding uses `log(log_offset)`, the value silence gives, so that a short segment looks like a segment that
    ends in silence. Masked bands take the spectrogram's mean rather than 0: log-mel values are mostly negative
    (silence is `log(1e-6)`, about -13.8), so 0 would be a loud, unnatural band, while the mean removes the
    band's information without shifting the segment's statistics.

    Args:
        sampling_rate (`int`, *optional*, defaults to 44100): rate of the audio given.
        num_mel_bins (`int`, *optional*, defaults to 80): mel bins (`feature_size`).
        n_fft (`int`, *optional*, defaults to 1472): FFT size and window length.
        hop_length (`int`, *optional*, defaults to 736): hop between frames.
        audio_frames (`int`, *optional*, defaults to 128): frames per segment after padding or cropping.
        log_offset (`float`, *optional*, defaults to 1e-6): added before the logarithm.
        spec_augment_ratio (`float`, *optional*, defaults to 0.05): largest masked fraction of each axis.

    Example:

    ```python
    >>> import numpy as np
    >>> from pemt import PemtConfig, PemtFeatureExtractor

    >>> extractor = PemtFeatureExtractor.from_model_config(PemtConfig.from_preset("tiny"))
    >>> extractor(np.zeros((3, 6400), dtype=np.float32), return_tensors="pt")["audio_values"].shape
    torch.Size([3, 1, 16, 16])
    ```"""

    model_input_names = ["audio_values"]

    def __init__(
        self,
        sampling_rate: int = 44100,
        num_mel_bins: int = 80,
        n_fft: int = 1472,
        hop_length: int = 736,
        audio_frames: int = 128,
        log_offset: float = 1e-6,
        spec_augment_ratio: float = 0.05,
        **kwargs,
    ):
        # Saved configs carry the base class's derived fields; they are rebuilt from the ones above.
        for derived in ("feature_size", "feature_extractor_type", "padding_value"):
            kwargs.pop(derived, None)
        super().__init__(feature_size=num_mel_bins, sampling_rate=sampling_rate, padding_value=math.log(log_offset), **kwargs)
        self.num_mel_bins = num_mel_bins
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.audio_frames = audio_frames
        self.log_offset = log_offset
        self.spec_augment_ratio = spec_augment_ratio
        self._mel_filters: torch.Tensor | None = None

    @classmethod
    def from_model_config(cls, config: PemtConfig) -> PemtFeatureExtractor:
        """Builds the extractor from a model config's audio fields."""
        return cls(
            sampling_rate=config.audio_sampling_rate,
            num_mel_bins=config.num_mel_bins,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            audio_frames=config.audio_frames,
            log_offset=config.log_offset,
            spec_augment_ratio=config.spec_augment_ratio,
        )

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_mel_filters", None)
        return output

    @property
    def mel_filters(self) -> torch.Tensor:
        """`[n_fft // 2 + 1, num_mel_bins]` float32, built once."""
        if self._mel_filters is None:
            bank = htk_mel_filter_bank(self.n_fft // 2 + 1, self.num_mel_bins, self.sampling_rate)
            self._mel_filters = bank.to(torch.float32)
        return self._mel_filters

    def log_mel(self, waveforms: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Log-mel spectrograms of `[N, samples]` waveforms: `[N, num_mel_bins, audio_frames]` float32."""
        waveforms = torch.as_tensor(waveforms, dtype=torch.float32)
        if waveforms.ndim == 1:
            waveforms = waveforms[None]
        if waveforms.shape[-1] <= self.n_fft // 2:
            # Reflect padding needs more samples than half a window; zeros are what a longer silent segment holds.
            waveforms = torch.nn.functional.pad(waveforms, (0, self.n_fft // 2 + 1 - waveforms.shape[-1]))
        window = torch.hann_window(self.n_fft, periodic=True)
        stft = torch.stft(
            waveforms,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = stft.real.square() + stft.imag.square()  # [N, freqs, frames]
        mel = torch.einsum("nft,fm->nmt", power, self.mel_filters)
        log_mel = torch.log(mel + self.log_offset)
        frames = log_mel.shape[-1]
        if frames >= self.audio_frames:
            return log_mel[..., : self.audio_frames].contiguous()
        return torch.nn.functional.pad(log_mel, (0, self.audio_frames - frames), value=math.log(self.log_offset))

    def spec_augment(self, log_mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masks one band of mel bins and one band of frames in each `[..., mel, frames]` spectrogram (new tensor)."""
        out = log_mel.clone()
        flat = out.reshape(-1, *out.shape[-2:])
        for spectrogram in flat:
            fill = spectrogram.mean()
            for axis, size in ((0, spectrogram.shape[0]), (1, spectrogram.shape[1])):
                width = int(torch.randint(0, int(self.spec_augment_ratio * size) + 1, (1,), generator=generator))
                if width == 0:
                    continue
                start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
                spectrogram.narrow(axis, start, width).fill_(fill)
        return out

    def __call__(
        self,
        waveforms: np.ndarray | torch.Tensor | list[np.ndarray],
        sampling_rate: int | None = None,
        training: bool = False,
        generator: torch.Generator | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            waveforms (`np.ndarray`, `torch.Tensor` or list of 1-D arrays): mono segments, `[N, samples]`, at
                `sampling_rate`; segments of other lengths are padded or cropped in the spectrogram.
            sampling_rate (`int`, *optional*): checked against the extractor's rate, which audio must already have.
            training (`bool`, *optional*, defaults to `False`): apply SpecAugment masking.
            generator (`torch.Generator`, *optional*): randomness of the masking.
            return_tensors (`str`, *optional*): `"pt"`, `"np"` or `None` (NumPy).

        Returns:
            [`BatchFeature`] with `audio_values` `[N, 1, num_mel_bins, audio_frames]`.
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"Audio at {sampling_rate} Hz given to an extractor for {self.sampling_rate} Hz; resample it first "
                "(the processor does this when it decodes)."
            )
        if isinstance(waveforms, list):
            features = torch.cat([self.log_mel(np.asarray(w, dtype=np.float32)) for w in waveforms])
        else:
            features = self.log_mel(waveforms)
        if training:
            features = self.spec_augment(features, generator)
        features = features[:, None]
        return BatchFeature({"audio_values": features if return_tensors == "pt" else features.numpy()}, tensor_type=return_tensors)


